//! Bearer tokens of the demo's identity provider: compact JWS, `EdDSA`
//! (Ed25519, RFC 8037), signed with the `ed25519-compact` crate.
//!
//! The demo provider (envoy/envoy.yaml, `demo-idp`) uses the Ed25519 example
//! key pair of RFC 8037 appendix A: its private half is published, so these
//! tokens mean nothing outside the demo. tests/integration/demo_token.py
//! mints the same tokens with PyJWT.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;
use ed25519_compact::{KeyPair, Seed};
use serde::Serialize;

/// RFC 8037 A.1 private key `d` (base64url): the demo's, public.
pub const DEMO_PRIVATE_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
pub const DEMO_ISSUER: &str = "https://idp.palisade.demo";
pub const DEMO_AUDIENCE: &str = "palisade-demo";
pub const DEMO_KID: &str = "demo-ed25519";
/// Below the demo provider's `max_lifetime` (15 minutes).
pub const LIFETIME_S: u64 = 600;

pub struct Issuer {
    keypair: KeyPair,
    kid: String,
    issuer: String,
    audience: String,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    iat: u64,
    exp: u64,
}

impl Issuer {
    /// The demo's provider, or the same with another Ed25519 private key
    /// (`d`, base64url, 32 bytes).
    pub fn demo(private_d: &str) -> Result<Issuer, String> {
        let d = B64URL
            .decode(private_d.trim().trim_end_matches('='))
            .map_err(|_| "the Ed25519 private key is not base64url".to_owned())?;
        let seed = Seed::from_slice(&d)
            .map_err(|_| "the Ed25519 private key is not 32 bytes".to_owned())?;
        // ed25519-compact refuses (panics on) an all-zero seed.
        if d.iter().all(|&b| b == 0) {
            return Err("the Ed25519 private key is all zeros".to_owned());
        }
        Ok(Issuer {
            keypair: KeyPair::from_seed(seed),
            kid: DEMO_KID.to_owned(),
            issuer: DEMO_ISSUER.to_owned(),
            audience: DEMO_AUDIENCE.to_owned(),
        })
    }

    /// A token for `sub`, issued at `now` (Unix seconds), living LIFETIME_S.
    pub fn mint(&self, sub: &str, now: u64) -> String {
        let header = Header {
            alg: "EdDSA",
            typ: "JWT",
            kid: &self.kid,
        };
        let claims = Claims {
            iss: &self.issuer,
            aud: &self.audience,
            sub,
            iat: now,
            exp: now + LIFETIME_S,
        };
        let signing_input = format!("{}.{}", encode_json(&header), encode_json(&claims));
        let signature = self.keypair.sk.sign(signing_input.as_bytes(), None);
        format!("{signing_input}.{}", B64URL.encode(signature.as_ref()))
    }

    /// The public key `x` (base64url), as in the provider's JWK.
    #[cfg(test)]
    fn public_x(&self) -> String {
        B64URL.encode(self.keypair.pk.as_ref())
    }
}

fn encode_json(value: &impl Serialize) -> String {
    // These structs of strings and integers always serialize.
    B64URL.encode(serde_json::to_vec(value).unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests: a failure should stop the test")]
mod tests {
    use super::*;
    use ed25519_compact::Signature;

    #[test]
    fn demo_key_is_rfc_8037_a1() {
        let issuer = Issuer::demo(DEMO_PRIVATE_D).unwrap();
        assert_eq!(
            issuer.public_x(),
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
    }

    /// RFC 8037 A.4: the Ed25519 signature of the example JWS, byte for byte.
    #[test]
    fn rfc_8037_a4_signature_is_reproduced() {
        let issuer = Issuer::demo(DEMO_PRIVATE_D).unwrap();
        let input = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc";
        let sig = issuer.keypair.sk.sign(input.as_bytes(), None);
        assert_eq!(
            B64URL.encode(sig.as_ref()),
            "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
        );
    }

    #[test]
    fn minted_token_verifies_and_carries_the_claims() {
        let issuer = Issuer::demo(DEMO_PRIVATE_D).unwrap();
        let token = issuer.mint("alice", 1_700_000_000);
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(
            header,
            serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": "demo-ed25519"})
        );
        let claims: serde_json::Value =
            serde_json::from_slice(&B64URL.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["iss"], DEMO_ISSUER);
        assert_eq!(claims["aud"], DEMO_AUDIENCE);
        assert_eq!(
            claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
            LIFETIME_S
        );
        let sig = Signature::from_slice(&B64URL.decode(parts[2]).unwrap()).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        issuer.keypair.pk.verify(signed.as_bytes(), &sig).unwrap();
        assert!(Issuer::demo("not base64!").is_err());
        assert!(Issuer::demo("AAAA").is_err());
        assert!(Issuer::demo(&B64URL.encode([0u8; 32])).is_err());
    }
}
