//! Deterministic, labelled mixtures: draw from several sources without
//! replacement, split disjointly, and mix benign task samples with harmful
//! samples at a poison ratio — the usual protocol of the harmful fine-tuning
//! literature. Everything depends only on the inputs and a seed.

use std::collections::HashSet;

use crate::error::{DataError, Result};
use crate::rng::SplitMix64;
use crate::sample::{check_unique_ids, Label, Sample};

/// The default poison ratio: harmful samples make up 10% of the pool.
pub const DEFAULT_POISON_RATIO: f64 = 0.1;

/// Splits `n` into parts proportional to `weights`, each at most its cap,
/// by the largest-remainder rule; what a capped part cannot take goes to the
/// others. Fails if the caps sum to less than `n`.
pub fn allocate(n: usize, weights: &[f64], caps: &[usize]) -> Result<Vec<usize>> {
    if weights.len() != caps.len() || weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
        return Err(DataError::Invalid {
            what: "allocation weights".into(),
            message: "one finite, non-negative weight per source is required".into(),
        });
    }
    let available: usize = caps.iter().sum();
    if available < n {
        return Err(DataError::Invalid {
            what: "size".into(),
            message: format!("{n} samples requested but the sources hold only {available}"),
        });
    }
    let mut out = vec![0usize; caps.len()];
    let mut remaining = n;
    while remaining > 0 {
        let open: Vec<usize> = (0..caps.len()).filter(|&i| out[i] < caps[i]).collect();
        let wsum: f64 = open.iter().map(|&i| weights[i]).sum();
        let share = |i: usize| {
            if wsum > 0.0 {
                remaining as f64 * weights[i] / wsum
            } else {
                remaining as f64 / open.len() as f64
            }
        };
        let mut given = 0;
        let mut rema: Vec<(f64, usize)> = Vec::with_capacity(open.len());
        for &i in &open {
            let s = share(i);
            let take = (s.floor() as usize).min(caps[i] - out[i]);
            out[i] += take;
            given += take;
            rema.push((s - s.floor(), i));
        }
        let mut left = remaining - given;
        rema.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, i) in &rema {
            if left == 0 {
                break;
            }
            if out[i] < caps[i] {
                out[i] += 1;
                left -= 1;
            }
        }
        if left == remaining {
            // No progress (only zero-weight sources remain open): fill in order.
            for &i in &open {
                let take = (caps[i] - out[i]).min(left);
                out[i] += take;
                left -= take;
            }
        }
        remaining = left;
    }
    Ok(out)
}

/// Draws `n` items without replacement, in random order.
pub fn draw<T: Clone>(items: &[T], n: usize, rng: &mut SplitMix64) -> Result<Vec<T>> {
    if n > items.len() {
        return Err(DataError::Invalid {
            what: "size".into(),
            message: format!("{n} requested from {} available", items.len()),
        });
    }
    let perm = rng.permutation(items.len());
    Ok(perm[..n].iter().map(|&i| items[i].clone()).collect())
}

/// Shuffles `items` and cuts consecutive, disjoint parts of the given sizes
/// (the rest is returned last).
pub fn split<T>(mut items: Vec<T>, sizes: &[usize], rng: &mut SplitMix64) -> Result<Vec<Vec<T>>> {
    let need: usize = sizes.iter().sum();
    if need > items.len() {
        return Err(DataError::Invalid {
            what: "split sizes".into(),
            message: format!("{need} requested from {} available", items.len()),
        });
    }
    rng.shuffle(&mut items);
    let mut rest = items;
    let mut parts = Vec::with_capacity(sizes.len() + 1);
    for &s in sizes {
        let tail = rest.split_off(s);
        parts.push(rest);
        rest = tail;
    }
    parts.push(rest);
    Ok(parts)
}

/// Removes samples whose last user turn repeats an earlier one (after
/// trimming and lowercasing), keeping the first. Returns the removed count.
pub fn dedup_by_prompt(samples: &mut Vec<Sample>) -> usize {
    let before = samples.len();
    let mut seen = HashSet::new();
    samples.retain(|s| seen.insert(s.last_user().unwrap_or("").trim().to_lowercase()));
    before - samples.len()
}

/// Settings of [`mix_pool`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixSpec {
    /// Pool size.
    pub size: usize,
    /// Fraction of the pool that is harmful, in `[0, 1]`.
    pub poison_ratio: f64,
    /// Seed.
    pub seed: u64,
}

impl MixSpec {
    /// Number of harmful samples: `round(size * poison_ratio)`.
    pub fn harmful_count(&self) -> usize {
        (self.size as f64 * self.poison_ratio).round() as usize
    }
}

/// A fine-tuning pool: `size - k` benign samples and `k = round(size * p)`
/// harmful ones, drawn without replacement, relabelled `benign` / `harmful`,
/// and shuffled together. Ids are kept (and must be unique).
pub fn mix_pool(benign: &[Sample], harmful: &[Sample], spec: MixSpec) -> Result<Vec<Sample>> {
    if !(0.0..=1.0).contains(&spec.poison_ratio) {
        return Err(DataError::Invalid {
            what: "poison ratio".into(),
            message: format!("{} (must be in [0, 1])", spec.poison_ratio),
        });
    }
    let k = spec.harmful_count();
    let mut rng = SplitMix64::derive(spec.seed, 0x006d_6978, 0);
    let mut pool = draw(benign, spec.size - k.min(spec.size), &mut rng)?;
    pool.iter_mut().for_each(|s| s.label = Some(Label::Benign));
    let mut bad = draw(harmful, k.min(spec.size), &mut rng)?;
    bad.iter_mut().for_each(|s| s.label = Some(Label::Harmful));
    pool.append(&mut bad);
    rng.shuffle(&mut pool);
    check_unique_ids(&pool)?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::Message;

    fn s(src: &str, i: usize) -> Sample {
        Sample {
            id: format!("{src}:{i}"),
            source: src.into(),
            label: None,
            messages: vec![Message::user(format!("q{i}")), Message::assistant("a")],
            reference: None,
            prefill: None,
        }
    }

    #[test]
    fn allocate_respects_caps_and_weights() {
        assert_eq!(allocate(10, &[0.5, 0.5], &[100, 100]).unwrap(), vec![5, 5]);
        assert_eq!(
            allocate(10, &[0.5, 0.3, 0.2], &[100, 1, 100])
                .unwrap()
                .iter()
                .sum::<usize>(),
            10
        );
        let a = allocate(10, &[0.5, 0.3, 0.2], &[100, 1, 100]).unwrap();
        assert_eq!(a[1], 1);
        assert!(a[0] > a[2]);
        assert!(allocate(10, &[1.0], &[3]).is_err());
        assert_eq!(
            allocate(3, &[0.0, 0.0], &[2, 2])
                .unwrap()
                .iter()
                .sum::<usize>(),
            3
        );
    }

    #[test]
    fn pool_has_the_poison_ratio_and_is_deterministic() {
        let benign: Vec<_> = (0..50).map(|i| s("b", i)).collect();
        let harmful: Vec<_> = (0..20).map(|i| s("h", i)).collect();
        let spec = MixSpec {
            size: 30,
            poison_ratio: 0.1,
            seed: 4,
        };
        let p = mix_pool(&benign, &harmful, spec).unwrap();
        assert_eq!(p.len(), 30);
        assert_eq!(
            p.iter().filter(|x| x.label == Some(Label::Harmful)).count(),
            3
        );
        assert!(p
            .iter()
            .filter(|x| x.label == Some(Label::Harmful))
            .all(|x| x.source == "h"));
        assert_eq!(p, mix_pool(&benign, &harmful, spec).unwrap());
        assert_ne!(
            p,
            mix_pool(&benign, &harmful, MixSpec { seed: 5, ..spec }).unwrap()
        );
        assert!(mix_pool(
            &benign,
            &harmful,
            MixSpec {
                poison_ratio: 1.5,
                ..spec
            }
        )
        .is_err());
    }

    #[test]
    fn split_is_disjoint() {
        let mut rng = SplitMix64::new(1);
        let parts = split((0..10).collect::<Vec<_>>(), &[3, 4], &mut rng).unwrap();
        assert_eq!(
            parts.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![3, 4, 3]
        );
        let mut all: Vec<_> = parts.concat();
        all.sort_unstable();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        let mut v = vec![s("a", 1), s("a", 2), s("a", 1)];
        v[2].id = "a:3".into();
        assert_eq!(dedup_by_prompt(&mut v), 1);
    }
}
