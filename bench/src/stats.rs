//! Medians and spreads: these machines are noisy, so the bench reports medians and ratios.

use std::time::Duration;

use serde::Serialize;

pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1_000.0
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    /// For an answer with a tail target (keap-hooks' warm answer); over fewer than 100 samples
    /// it is close to the maximum.
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| s.is_finite()).collect();
        if sorted.is_empty() {
            return Self::default();
        }
        sorted.sort_by(f64::total_cmp);
        Self {
            n: sorted.len(),
            median: quantile(&sorted, 0.5),
            p10: quantile(&sorted, 0.1),
            p90: quantile(&sorted, 0.9),
            p99: quantile(&sorted, 0.99),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        }
    }
}

/// Linear interpolation between the two nearest ranks; `sorted` is ascending and not empty.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    let weight = position - below as f64;
    sorted[below] * (1.0 - weight) + sorted[above] * weight
}

/// `a / b`, or NaN (printed as "n/a") when `b` is zero.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Summary::of(&[4.0, 1.0, 3.0, 2.0]).median, 2.5);
        let summary = Summary::of(&[5.0; 10]);
        assert_eq!((summary.min, summary.p90, summary.max), (5.0, 5.0, 5.0));
        let ramp: Vec<f64> = (0..=100).map(f64::from).collect();
        assert_eq!(Summary::of(&ramp).p99, 99.0);
    }

    #[test]
    fn empty_samples_summarise_to_zero() {
        assert_eq!(Summary::of(&[]).n, 0);
        assert!(ratio(1.0, 0.0).is_nan());
    }
}
