//! The bot score: a logistic model over the signals. Evaluating it is a
//! dot product and one `exp`, no model runtime; `make train` fits the
//! weights (tests/train) and writes them in the configuration's own form.

use crate::stages::bot::signals::{Signal, Strengths, SIGNALS};

/// Bias and one weight per signal; a weight of 0 disables its signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Model {
    pub bias: f32,
    pub weights: [f32; SIGNALS],
}

/// How many reasons a score carries to the upstream and the event.
pub const TOP_REASONS: usize = 3;

/// A request's score and the signals that raised it most.
#[derive(Debug, Clone, PartialEq)]
pub struct Score {
    /// 0..=100: the model's probability that the client is automated.
    pub value: u8,
    /// Signals by contribution (weight × strength), largest first, only
    /// those that raised the score.
    pub reasons: Vec<Signal>,
}

impl Model {
    pub fn weight(&self, signal: Signal) -> f32 {
        self.weights.get(signal.index()).copied().unwrap_or(0.0)
    }

    /// Whether any of `signals` has a weight: a signal nobody weighs is
    /// not worth measuring (behaviour costs shared-data calls).
    pub fn weighs_any(&self, signals: &[Signal]) -> bool {
        signals.iter().any(|s| self.weight(*s) != 0.0)
    }

    pub fn score(&self, strengths: &Strengths) -> Score {
        let mut z = self.bias;
        let mut raised: Vec<(f32, Signal)> = Vec::new();
        for signal in Signal::ALL {
            let contribution = self.weight(signal) * strengths.get(signal);
            z += contribution;
            if contribution > 0.0 {
                raised.push((contribution, signal));
            }
        }
        let probability = 1.0 / (1.0 + (-z).exp());
        let value = (probability * 100.0).round().clamp(0.0, 100.0) as u8;
        // The strongest first, the earlier signal on a tie; picked rather
        // than sorted: a slice sort costs about 4 KB of wasm for a handful
        // of signals.
        let mut reasons = Vec::with_capacity(TOP_REASONS);
        while reasons.len() < TOP_REASONS {
            let mut best: Option<usize> = None;
            for (i, (c, _)) in raised.iter().enumerate() {
                if best.is_none_or(|b| raised.get(b).is_some_and(|(bc, _)| c > bc)) {
                    best = Some(i);
                }
            }
            let Some(b) = best else { break };
            reasons.push(raised.remove(b).1);
        }
        Score { value, reasons }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        let mut weights = [0.0; SIGNALS];
        weights[Signal::AutomationUa.index()] = 5.0;
        weights[Signal::HeaderOrder.index()] = 2.0;
        weights[Signal::MachineTiming.index()] = 4.0;
        weights[Signal::ChallengePassed.index()] = -6.0;
        Model {
            bias: -4.0,
            weights,
        }
    }

    #[test]
    fn no_signal_scores_the_bias() {
        // 100 / (1 + e^4) = 1.8
        assert_eq!(model().score(&Strengths::default()).value, 2);
        assert!(model().score(&Strengths::default()).reasons.is_empty());
    }

    #[test]
    fn composition_is_logistic_with_reasons_by_contribution() {
        let mut s = Strengths::default();
        s.set(Signal::HeaderOrder, 1.0);
        s.set(Signal::AutomationUa, 1.0);
        s.set(Signal::MachineTiming, 0.5);
        // z = -4 + 5 + 2 + 2 = 5: 100 / (1 + e^-5) = 99.3
        let score = model().score(&s);
        assert_eq!(score.value, 99);
        assert_eq!(
            score.reasons,
            vec![
                Signal::AutomationUa,
                Signal::HeaderOrder,
                Signal::MachineTiming
            ]
        );
        // A pass lowers it and is no reason.
        s.set(Signal::ChallengePassed, 1.0);
        let score = model().score(&s);
        assert_eq!(score.value, 27, "z = -1");
        assert!(!score.reasons.contains(&Signal::ChallengePassed));
    }

    #[test]
    fn zero_weight_disables_and_extremes_saturate() {
        let mut s = Strengths::default();
        s.set(Signal::Flow, 1.0);
        assert_eq!(model().score(&s).value, 2);
        let mut m = model();
        m.bias = 1e9;
        assert_eq!(m.score(&s).value, 100);
        m.bias = -1e9;
        assert_eq!(m.score(&s).value, 0);
        m.bias = f32::NAN;
        assert!(m.score(&s).value <= 100);
        assert!(model().weighs_any(&[Signal::MachineTiming, Signal::Flow]));
        assert!(!model().weighs_any(&[Signal::Flow, Signal::DistinctPaths]));
    }
}
