"""Account protection on NGINX (ngx_wasm_module, 2 worker processes): the
Envoy suite's login scenarios (test_login) on the second host. The username
is read in the body step (the host hands the whole body over before the
request goes upstream), the upstream's answer in the response-headers step.

What is proven: a credential-stuffing run from a few addresses reaches the
upstream at most 5 times per address (``usernames`` rule) and is banned,
while a user elsewhere who mistypes twice logs in; a username sprayed from
many addresses is closed to strangers (``login.failures_user``) and open to
its owner's network; no password or username reaches nginx's error log; a
token used from a fourth network is refused (``token.shared``).
"""

from __future__ import annotations

import harness
from test_login import (
    ALL_RULES,
    BROWSER,
    FAIL_USER,
    LEAKED,
    REAL_PASSWORD,
    REAL_USER,
    LoginService,
    config,
    login,
    real_user_mistypes_twice,
)


def start(nginx, service: LoginService, cfg: dict):
    # Small tables: the harness's shm_kv zone holds the default 65,536-slot
    # tables of one section, not two.
    cfg["rate_limits"]["slots"] = 1024
    cfg["login"]["slots"] = 1024
    service.start()
    return nginx(cfg, upstream_server=service)


def test_stuffing_is_stopped_and_the_real_user_is_not(nginx):
    service = LoginService({REAL_USER: REAL_PASSWORD})
    try:
        inst = start(nginx, service, config(*ALL_RULES))
        attackers = ["198.51.100.10", "198.51.100.11"]
        reasons: dict[str, int] = {}
        for i, (user, password) in enumerate(LEAKED[:60]):
            r = login(inst, attackers[i % 2], user, password)
            key = harness.reason_of(r) or str(r[0])
            reasons[key] = reasons.get(key, 0) + 1
        print(f"nginx stuffing, 2 addresses x 30 usernames: {service.count()} reached the upstream; {reasons}")
        assert service.count() <= len(attackers) * 5, reasons
        assert reasons.get("ban.active", 0) > 0, reasons
        assert real_user_mistypes_twice(inst, "203.0.113.7", BROWSER) == [401, 401, 200]
        # JSON bodies are read the same way.
        r = login(inst, "198.51.100.10", "someone-new", "x", as_json=True)
        assert (r[0], harness.reason_of(r)) == (403, "ban.active"), r
        log = inst.error_log()
        leaked = [s for pair in LEAKED[:60] for s in pair if s in log] + [s for s in (REAL_USER, REAL_PASSWORD) if s in log]
        assert not leaked, f"{len(leaked)} credentials in nginx's error log"
    finally:
        service.stop()


def test_a_username_under_attack_stays_open_to_its_owner(nginx):
    service = LoginService({REAL_USER: REAL_PASSWORD})
    try:
        inst = start(nginx, service, config(*ALL_RULES))
        home = "203.0.113.80"
        assert login(inst, home, REAL_USER, REAL_PASSWORD, BROWSER)[0] == 200
        for i in range(12):
            login(inst, f"192.0.2.{10 + i}", REAL_USER, f"guess-{i}", BROWSER, as_json=i % 2 == 0)
        assert service.count(REAL_USER) <= 1 + FAIL_USER["capacity"]
        r = login(inst, "192.0.2.200", REAL_USER, REAL_PASSWORD, BROWSER)
        assert (r[0], harness.reason_of(r)) == (429, "login.failures_user"), r
        assert login(inst, home, REAL_USER, REAL_PASSWORD, BROWSER)[0] == 200
    finally:
        service.stop()


def test_a_token_used_from_many_networks_is_refused_on_nginx(nginx):
    """test_token_sharing on the second host, with its configuration: a
    verified token from a fourth network is refused (403 ``token.shared``)
    whichever worker takes it; its first three networks and another user's
    token are served."""
    import copy

    from demo_token import mint
    from test_token_sharing import CONFIG as SHARING, call

    cfg = copy.deepcopy(SHARING)
    cfg["rate_limits"]["slots"] = 256
    cfg["rate_limits"]["distinct_slots"] = 256
    inst = nginx(cfg)
    token = mint("alice")
    owners = ["203.0.113.10", "198.51.100.20", "192.0.2.30"]
    assert [call(inst, token, ip)[0] for ip in owners for _ in range(2)] == [200] * 6
    thieves = [call(inst, token, f"10.9.{i}.1") for i in range(6)]
    assert {(r[0], harness.reason_of(r)) for r in thieves} == {(403, "token.shared")}, thieves
    assert call(inst, token, owners[0])[0] == 200
    assert call(inst, mint("bob"), "10.9.0.1")[0] == 200
    assert token not in inst.error_log()
    inst.assert_healthy()
