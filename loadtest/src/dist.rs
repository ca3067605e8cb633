//! Distributions of names over a name table: a fixed list, uniform over N, Zipf over N.

use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// Draws indices into a name table of `n` entries.
#[derive(Debug, Clone)]
pub enum IndexDist {
    /// Cycle through (or draw uniformly from) a fixed list of indices.
    Fixed(Vec<u64>),
    /// Uniform over 0..n.
    Uniform(u64),
    /// Zipf over 0..n: index 0 is the most popular, P(k) ∝ 1/(k+1)^s.
    Zipf { n: u64, zipf: Zipf<f64> },
}

impl IndexDist {
    pub fn fixed(indices: Vec<u64>) -> Self {
        assert!(!indices.is_empty(), "fixed distribution needs at least one name");
        IndexDist::Fixed(indices)
    }
    pub fn uniform(n: u64) -> Self {
        assert!(n > 0, "uniform distribution over zero names");
        IndexDist::Uniform(n)
    }
    pub fn zipf(n: u64, exponent: f64) -> Self {
        assert!(n > 0, "zipf distribution over zero names");
        let zipf = Zipf::new(n, exponent).expect("zipf parameters: n > 0, exponent >= 0");
        IndexDist::Zipf { n, zipf }
    }
    /// Number of distinct indices this distribution can return.
    pub fn support(&self) -> u64 {
        match self {
            IndexDist::Fixed(v) => v.len() as u64,
            IndexDist::Uniform(n) => *n,
            IndexDist::Zipf { n, .. } => *n,
        }
    }
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        match self {
            IndexDist::Fixed(v) => v[rng.gen_range(0..v.len())],
            IndexDist::Uniform(n) => rng.gen_range(0..*n),
            IndexDist::Zipf { n, zipf } => {
                // rand_distr's Zipf returns ranks 1..=n as f64.
                let k = zipf.sample(rng) as u64;
                k.clamp(1, *n) - 1
            }
        }
    }
}

/// The exact Zipf probability of index `k` (0-based) over `n` indices with exponent `s`.
pub fn zipf_pmf(k: u64, n: u64, s: f64) -> f64 {
    let h: f64 = (1..=n).map(|i| 1.0 / (i as f64).powf(s)).sum();
    1.0 / ((k + 1) as f64).powf(s) / h
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    fn counts(d: &IndexDist, n: usize, draws: usize) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(7);
        let mut c = vec![0usize; n];
        for _ in 0..draws {
            c[d.sample(&mut rng) as usize] += 1;
        }
        c
    }

    #[test]
    fn uniform_is_flat() {
        let n = 10;
        let draws = 200_000;
        let c = counts(&IndexDist::uniform(n as u64), n, draws);
        let expect = draws as f64 / n as f64;
        // chi-square with 9 degrees of freedom; 27.9 is the 0.999 quantile
        let chi2: f64 = c.iter().map(|&o| (o as f64 - expect).powi(2) / expect).sum();
        assert!(chi2 < 27.9, "chi2 {chi2} counts {c:?}");
    }

    #[test]
    fn zipf_matches_pmf() {
        let n = 20u64;
        let s = 1.0;
        let draws = 400_000;
        let c = counts(&IndexDist::zipf(n, s), n as usize, draws);
        let mut chi2 = 0.0;
        for k in 0..n {
            let expect = zipf_pmf(k, n, s) * draws as f64;
            chi2 += (c[k as usize] as f64 - expect).powi(2) / expect;
        }
        // 19 degrees of freedom; 43.8 is the 0.999 quantile
        assert!(chi2 < 43.8, "chi2 {chi2} counts {c:?}");
        // monotone head
        assert!(c[0] > c[1] && c[1] > c[2] && c[2] > c[5]);
        // index 0 about twice index 1 for s = 1
        let r = c[0] as f64 / c[1] as f64;
        assert!((r - 2.0).abs() < 0.1, "ratio {r}");
    }

    #[test]
    fn zipf_large_support_stays_in_range() {
        let d = IndexDist::zipf(1_000_000, 1.1);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut top = 0;
        for _ in 0..100_000 {
            let k = d.sample(&mut rng);
            assert!(k < 1_000_000);
            if k == 0 {
                top += 1;
            }
        }
        let p0 = zipf_pmf(0, 1_000_000, 1.1);
        let got = top as f64 / 100_000.0;
        assert!((got - p0).abs() < 0.01, "p0 {p0} got {got}");
    }

    #[test]
    fn zipf_exponent_zero_is_uniform() {
        let n = 8;
        let draws = 80_000;
        let c = counts(&IndexDist::zipf(n as u64, 0.0), n, draws);
        for &x in &c {
            assert!((x as f64 - 10_000.0).abs() < 600.0, "{c:?}");
        }
    }

    #[test]
    fn fixed_only_returns_listed() {
        let d = IndexDist::fixed(vec![3, 9]);
        let mut rng = SmallRng::seed_from_u64(3);
        let mut seen = [0; 2];
        for _ in 0..1000 {
            match d.sample(&mut rng) {
                3 => seen[0] += 1,
                9 => seen[1] += 1,
                x => panic!("unexpected {x}"),
            }
        }
        assert!(seen[0] > 400 && seen[1] > 400);
        assert_eq!(d.support(), 2);
    }
}
