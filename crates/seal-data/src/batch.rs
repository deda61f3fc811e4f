//! Batching: samplers with per-epoch seeds, length bucketing, padded and
//! packed (padding-free) batch layouts, and the two parallel streams SEAL's
//! bilevel loop consumes (safe batches for the upper level, fine-tuning
//! batches for the lower level).
//!
//! Batches carry each row's sample id and slot (position in the tokenised
//! dataset) so per-sample losses map back to ranker slots.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::rng::SplitMix64;
use crate::sample::Label;
use crate::tokenize::TokenizedSample;

/// A right-padded batch, row-major `[batch_size, seq_len]`.
///
/// `loss_mask[b * seq_len + t] == 1` when token `t` of row `b` is a target
/// (part of the response or its end token); the model predicts it from
/// position `t - 1`, so the shift is the model's job. The mask is 0 on the
/// prompt and on padding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaddedBatch {
    /// Token ids, `pad_id` after each row's end.
    pub input_ids: Vec<i64>,
    /// 1 on real tokens, 0 on padding.
    pub attention_mask: Vec<i64>,
    /// 1 on loss-bearing tokens, 0 elsewhere.
    pub loss_mask: Vec<i64>,
    /// Rows.
    pub batch_size: usize,
    /// Columns (the longest row).
    pub seq_len: usize,
    /// The padding id.
    pub pad_id: i64,
    /// Each row's slot: [`TokenizedSample::index`].
    pub slots: Vec<usize>,
    /// Each row's sample id.
    pub ids: Vec<String>,
    /// Each row's label.
    pub labels: Vec<Option<Label>>,
}

impl PaddedBatch {
    /// Builds a batch from samples (in the given row order).
    pub fn new(samples: &[&TokenizedSample], pad_id: u32) -> Result<Self> {
        if samples.is_empty() {
            return Err(DataError::Invalid {
                what: "batch".into(),
                message: "no samples".into(),
            });
        }
        let seq_len = samples.iter().map(|s| s.len()).max().unwrap_or(0);
        let b = samples.len();
        let mut input_ids = vec![i64::from(pad_id); b * seq_len];
        let mut attention_mask = vec![0i64; b * seq_len];
        let mut loss_mask = vec![0i64; b * seq_len];
        for (r, s) in samples.iter().enumerate() {
            let row = r * seq_len;
            for (t, &id) in s.input_ids.iter().enumerate() {
                input_ids[row + t] = i64::from(id);
                attention_mask[row + t] = 1;
                loss_mask[row + t] = i64::from(t >= s.response_start);
            }
        }
        Ok(Self {
            input_ids,
            attention_mask,
            loss_mask,
            batch_size: b,
            seq_len,
            pad_id: i64::from(pad_id),
            slots: samples.iter().map(|s| s.index).collect(),
            ids: samples.iter().map(|s| s.id.clone()).collect(),
            labels: samples.iter().map(|s| s.label).collect(),
        })
    }

    /// Builds the batch of dataset positions `rows` of `data`.
    pub fn from_rows(data: &[TokenizedSample], rows: &[usize], pad_id: u32) -> Result<Self> {
        let picked = pick(data, rows)?;
        Self::new(&picked, pad_id)
    }

    /// Number of padding positions.
    pub fn padding_tokens(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m == 0).count()
    }

    /// Fraction of positions that are padding.
    pub fn padding_fraction(&self) -> f64 {
        let total = self.input_ids.len();
        if total == 0 {
            0.0
        } else {
            self.padding_tokens() as f64 / total as f64
        }
    }

    /// HF-style targets: the token id where `loss_mask` is 1, -100 elsewhere
    /// (unshifted).
    pub fn target_ids(&self) -> Vec<i64> {
        self.input_ids
            .iter()
            .zip(&self.loss_mask)
            .map(|(&t, &m)| if m == 1 { t } else { -100 })
            .collect()
    }
}

/// A packed, padding-free batch: the rows concatenated into one sequence,
/// with `cu_seqlens` (cumulative lengths, `len = rows + 1`, starting at 0)
/// and per-token `position_ids` restarting at 0 for each row, as
/// varlen attention kernels expect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedBatch {
    /// Concatenated token ids.
    pub input_ids: Vec<i64>,
    /// Position of each token within its own sequence.
    pub position_ids: Vec<i64>,
    /// Sequence boundaries: row `r` is `cu_seqlens[r]..cu_seqlens[r + 1]`.
    pub cu_seqlens: Vec<i64>,
    /// 1 on loss-bearing tokens (see [`PaddedBatch`]).
    pub loss_mask: Vec<i64>,
    /// Each row's slot.
    pub slots: Vec<usize>,
    /// Each row's sample id.
    pub ids: Vec<String>,
    /// Each row's label.
    pub labels: Vec<Option<Label>>,
}

impl PackedBatch {
    /// Packs samples (in the given order).
    pub fn new(samples: &[&TokenizedSample]) -> Result<Self> {
        if samples.is_empty() {
            return Err(DataError::Invalid {
                what: "batch".into(),
                message: "no samples".into(),
            });
        }
        let total: usize = samples.iter().map(|s| s.len()).sum();
        let mut out = Self {
            input_ids: Vec::with_capacity(total),
            position_ids: Vec::with_capacity(total),
            cu_seqlens: Vec::with_capacity(samples.len() + 1),
            loss_mask: Vec::with_capacity(total),
            slots: Vec::with_capacity(samples.len()),
            ids: Vec::with_capacity(samples.len()),
            labels: Vec::with_capacity(samples.len()),
        };
        out.cu_seqlens.push(0);
        for s in samples {
            for (t, &id) in s.input_ids.iter().enumerate() {
                out.input_ids.push(i64::from(id));
                out.position_ids.push(t as i64);
                out.loss_mask.push(i64::from(t >= s.response_start));
            }
            out.cu_seqlens.push(out.input_ids.len() as i64);
            out.slots.push(s.index);
            out.ids.push(s.id.clone());
            out.labels.push(s.label);
        }
        Ok(out)
    }

    /// Packs dataset positions `rows` of `data`.
    pub fn from_rows(data: &[TokenizedSample], rows: &[usize]) -> Result<Self> {
        let picked = pick(data, rows)?;
        Self::new(&picked)
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }
}

fn pick<'a>(data: &'a [TokenizedSample], rows: &[usize]) -> Result<Vec<&'a TokenizedSample>> {
    rows.iter()
        .map(|&r| {
            data.get(r).ok_or_else(|| DataError::Invalid {
                what: "batch row".into(),
                message: format!("{r} is out of range for {} samples", data.len()),
            })
        })
        .collect()
}

/// Yields, for each epoch, a partition of `0..n` into batches of dataset
/// positions; the order depends only on `(seed, stream, epoch)`.
///
/// With bucketing, each epoch shuffles all positions, cuts the shuffled list
/// into windows of `bucket_batches * batch_size`, sorts each window by
/// length, cuts it into batches, and shuffles the batch order: rows of a
/// batch have similar lengths (little padding) while the epoch stays random.
#[derive(Debug, Clone)]
pub struct BatchSampler {
    lengths: Vec<usize>,
    batch_size: usize,
    seed: u64,
    stream: u64,
    bucket_batches: Option<usize>,
    drop_last: bool,
}

impl BatchSampler {
    /// A sampler over samples with the given lengths (one per dataset
    /// position). `bucket_batches`: `None` for plain shuffling, `Some(k)` for
    /// length bucketing over windows of `k` batches.
    pub fn new(
        lengths: Vec<usize>,
        batch_size: usize,
        seed: u64,
        bucket_batches: Option<usize>,
    ) -> Result<Self> {
        if batch_size == 0 {
            return Err(DataError::Invalid {
                what: "batch size".into(),
                message: "must be at least 1".into(),
            });
        }
        if bucket_batches == Some(0) {
            return Err(DataError::Invalid {
                what: "bucket window".into(),
                message: "must be at least 1 batch".into(),
            });
        }
        Ok(Self {
            lengths,
            batch_size,
            seed,
            stream: 0,
            bucket_batches,
            drop_last: false,
        })
    }

    /// Sets the stream number mixed into the seed (distinct streams give
    /// independent orders from one seed).
    pub fn with_stream(mut self, stream: u64) -> Self {
        self.stream = stream;
        self
    }

    /// Drops a final batch smaller than the batch size.
    pub fn with_drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The batch size.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The batches of `epoch`.
    pub fn epoch(&self, epoch: u64) -> Vec<Vec<usize>> {
        let mut rng = SplitMix64::derive(self.seed, self.stream, epoch);
        let order = rng.permutation(self.lengths.len());
        let mut batches: Vec<Vec<usize>> = match self.bucket_batches {
            None => order
                .chunks(self.batch_size)
                .map(<[usize]>::to_vec)
                .collect(),
            Some(k) => {
                let window = k.saturating_mul(self.batch_size);
                let mut out = Vec::new();
                for w in order.chunks(window) {
                    let mut w = w.to_vec();
                    // Stable sort: ties keep their random order.
                    w.sort_by_key(|&i| self.lengths[i]);
                    out.extend(w.chunks(self.batch_size).map(<[usize]>::to_vec));
                }
                out
            }
        };
        if self.drop_last {
            batches.retain(|b| b.len() == self.batch_size);
        }
        if self.bucket_batches.is_some() {
            rng.shuffle(&mut batches);
        }
        batches
    }
}

/// Padding statistics of a set of padded batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PaddingStats {
    /// Real tokens.
    pub real_tokens: usize,
    /// Positions including padding.
    pub padded_positions: usize,
}

impl PaddingStats {
    /// The fraction of positions that are padding.
    pub fn fraction(&self) -> f64 {
        if self.padded_positions == 0 {
            0.0
        } else {
            1.0 - self.real_tokens as f64 / self.padded_positions as f64
        }
    }
}

/// Padding of right-padded batches `batches` over samples of `lengths`.
pub fn padding_stats(lengths: &[usize], batches: &[Vec<usize>]) -> PaddingStats {
    let mut st = PaddingStats::default();
    for b in batches {
        let max = b
            .iter()
            .filter_map(|&i| lengths.get(i))
            .copied()
            .max()
            .unwrap_or(0);
        st.real_tokens += b.iter().filter_map(|&i| lengths.get(i)).sum::<usize>();
        st.padded_positions += max * b.len();
    }
    st
}

/// Splits the rows of one batch into sub-batches of similar length, so that
/// each sub-batch is padded only to its own longest row.
///
/// `lengths[i]` is row `i`'s token count. The groups partition `0..n`; each
/// lists positions into `lengths` by increasing length (ties by position),
/// and the groups come in increasing length. The partition minimises
/// padded positions (`rows × longest` summed over groups) plus
/// `overhead_tokens` per group, the fixed cost of one more forward pass in
/// token equivalents: 0 splits wherever a row is shorter than the next,
/// `usize::MAX` never splits. Over length-sorted rows the best partition is
/// contiguous, so a dynamic programme over split points finds it exactly.
///
/// Unlike bucketing the epoch by length ([`BatchSampler`] with a bucket
/// window), this leaves which samples share a step, and when, unchanged: only
/// how the step's forward passes are shaped.
pub fn length_groups(lengths: &[usize], overhead_tokens: usize) -> Vec<Vec<usize>> {
    let n = lengths.len();
    if n == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (lengths[i], i));
    let sorted: Vec<u128> = order.iter().map(|&i| lengths[i] as u128).collect();
    let overhead = overhead_tokens as u128;
    // best[k]: the cheapest cost of the first k sorted rows; cut[k]: where
    // its last group starts.
    let mut best = vec![u128::MAX; n + 1];
    let mut cut = vec![0usize; n + 1];
    best[0] = 0;
    for end in 1..=n {
        // A group ending at `end` pads to sorted[end - 1] (the longest).
        let longest = sorted[end - 1];
        for start in 0..end {
            let cost = best[start] + (end - start) as u128 * longest + overhead;
            // `<` keeps the earliest start on ties: fewer groups.
            if cost < best[end] {
                best[end] = cost;
                cut[end] = start;
            }
        }
    }
    let mut groups = Vec::new();
    let mut end = n;
    while end > 0 {
        let start = cut[end];
        groups.push(order[start..end].to_vec());
        end = start;
    }
    groups.reverse();
    groups
}

/// The two parallel batch streams of SEAL's bilevel loop: every step takes
/// one fine-tuning batch (lower level, weighted by the ranker) and one safe
/// batch (upper level). Each stream walks its own epochs with its own
/// per-epoch seed and starts a new epoch when exhausted, so the shorter set
/// cycles while the longer one advances.
#[derive(Debug, Clone)]
pub struct BilevelStreams {
    finetune: Stream,
    safe: Stream,
}

#[derive(Debug, Clone)]
struct Stream {
    sampler: BatchSampler,
    epoch: u64,
    batches: Vec<Vec<usize>>,
    next: usize,
}

impl Stream {
    fn new(sampler: BatchSampler) -> Result<Self> {
        if sampler.is_empty() {
            return Err(DataError::Invalid {
                what: "batch stream".into(),
                message: "no samples".into(),
            });
        }
        let batches = sampler.epoch(0);
        if batches.is_empty() {
            return Err(DataError::Invalid {
                what: "batch stream".into(),
                message: format!(
                    "{} samples give no full batch of {} (drop_last)",
                    sampler.len(),
                    sampler.batch_size()
                ),
            });
        }
        Ok(Self {
            sampler,
            epoch: 0,
            batches,
            next: 0,
        })
    }

    fn next_batch(&mut self) -> Vec<usize> {
        if self.next >= self.batches.len() {
            self.epoch += 1;
            self.batches = self.sampler.epoch(self.epoch);
            self.next = 0;
        }
        let b = self.batches.get(self.next).cloned().unwrap_or_default();
        self.next += 1;
        b
    }
}

impl BilevelStreams {
    /// Pairs a fine-tuning sampler with a safe-set sampler. The samplers'
    /// streams are set to 0 (fine-tuning) and 1 (safe) so one seed gives
    /// independent orders.
    pub fn new(finetune: BatchSampler, safe: BatchSampler) -> Result<Self> {
        Ok(Self {
            finetune: Stream::new(finetune.with_stream(0))?,
            safe: Stream::new(safe.with_stream(1))?,
        })
    }

    /// The next `(fine-tuning batch, safe batch)` of dataset positions.
    pub fn next_pair(&mut self) -> (Vec<usize>, Vec<usize>) {
        (self.finetune.next_batch(), self.safe.next_batch())
    }

    /// Current epochs `(fine-tuning, safe)`.
    pub fn epochs(&self) -> (u64, u64) {
        (self.finetune.epoch, self.safe.epoch)
    }

    /// Fine-tuning batches per fine-tuning epoch.
    pub fn finetune_batches_per_epoch(&self) -> usize {
        self.finetune.batches.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(index: usize, len: usize, start: usize) -> TokenizedSample {
        TokenizedSample {
            id: format!("s:{index}"),
            index,
            label: None,
            input_ids: (0..len as u32).map(|t| t + 10).collect(),
            response_start: start,
        }
    }

    #[test]
    fn padded_layout() {
        let a = ts(4, 3, 1);
        let b = ts(7, 5, 3);
        let batch = PaddedBatch::new(&[&a, &b], 0).unwrap();
        assert_eq!((batch.batch_size, batch.seq_len), (2, 5));
        assert_eq!(batch.input_ids, vec![10, 11, 12, 0, 0, 10, 11, 12, 13, 14]);
        assert_eq!(batch.attention_mask, vec![1, 1, 1, 0, 0, 1, 1, 1, 1, 1]);
        assert_eq!(batch.loss_mask, vec![0, 1, 1, 0, 0, 0, 0, 0, 1, 1]);
        assert_eq!(batch.slots, vec![4, 7]);
        assert_eq!(batch.padding_tokens(), 2);
        assert_eq!(batch.target_ids()[..3], [-100, 11, 12]);
    }

    #[test]
    fn packed_layout() {
        let a = ts(0, 3, 1);
        let b = ts(1, 2, 1);
        let p = PackedBatch::new(&[&a, &b]).unwrap();
        assert_eq!(p.cu_seqlens, vec![0, 3, 5]);
        assert_eq!(p.position_ids, vec![0, 1, 2, 0, 1]);
        assert_eq!(p.loss_mask, vec![0, 1, 1, 0, 1]);
        assert_eq!(p.rows(), 2);
        assert!(PackedBatch::from_rows(&[a], &[3]).is_err());
    }

    #[test]
    fn length_groups_partition_and_minimise_padding() {
        let lengths = [120, 20, 22, 118, 21, 60, 19, 121];
        // No overhead: every distinct length could be its own group, but
        // merging equal-cost neighbours is never worse.
        for overhead in [0, 16, 64, 1_000, usize::MAX] {
            let groups = length_groups(&lengths, overhead);
            let mut seen: Vec<usize> = groups.iter().flatten().copied().collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>(), "{overhead}");
            for g in &groups {
                assert!(!g.is_empty());
                assert!(g.windows(2).all(|w| lengths[w[0]] <= lengths[w[1]]));
            }
        }
        // A modest overhead separates the short, middle and long rows.
        let groups = length_groups(&lengths, 16);
        assert_eq!(groups, vec![vec![6, 1, 4, 2], vec![5], vec![3, 0, 7]]);
        let padded = |groups: &[Vec<usize>]| -> usize {
            groups
                .iter()
                .map(|g| g.len() * g.iter().map(|&i| lengths[i]).max().unwrap())
                .sum()
        };
        // 4 × 22 + 60 + 3 × 121 padded positions instead of 8 × 121.
        assert_eq!(padded(&groups), 511);
        // An overhead larger than any saving keeps one group.
        assert_eq!(length_groups(&lengths, usize::MAX).len(), 1);
        assert_eq!(length_groups(&lengths, 10_000).len(), 1);
        assert!(length_groups(&[], 0).is_empty());
        assert_eq!(length_groups(&[5], 0), vec![vec![0]]);
    }

    /// Exhaustive check against every contiguous split of the sorted rows.
    #[test]
    fn length_groups_are_optimal() {
        let mut rng = crate::rng::SplitMix64::new(7);
        for _ in 0..200 {
            let n = 1 + (rng.next_u64() % 9) as usize;
            let lengths: Vec<usize> = (0..n)
                .map(|_| 1 + (rng.next_u64() % 200) as usize)
                .collect();
            let overhead = (rng.next_u64() % 100) as usize;
            let cost = |groups: &[Vec<usize>]| -> usize {
                groups
                    .iter()
                    .map(|g| overhead + g.len() * g.iter().map(|&i| lengths[i]).max().unwrap())
                    .sum()
            };
            let got = cost(&length_groups(&lengths, overhead));
            let mut sorted = lengths.clone();
            sorted.sort_unstable();
            let mut best = usize::MAX;
            for mask in 0u32..(1 << (n - 1)) {
                let (mut total, mut start) = (0, 0);
                for end in 1..=n {
                    if end == n || mask & (1 << (end - 1)) != 0 {
                        total += overhead + (end - start) * sorted[end - 1];
                        start = end;
                    }
                }
                best = best.min(total);
            }
            assert_eq!(got, best, "{lengths:?} overhead {overhead}");
        }
    }

    #[test]
    fn bucketing_reduces_padding() {
        let lengths: Vec<usize> = (0..400).map(|i| 5 + (i * 37 % 200)).collect();
        let plain = BatchSampler::new(lengths.clone(), 8, 1, None).unwrap();
        let bucket = BatchSampler::new(lengths.clone(), 8, 1, Some(16)).unwrap();
        let p0 = padding_stats(&lengths, &plain.epoch(0)).fraction();
        let p1 = padding_stats(&lengths, &bucket.epoch(0)).fraction();
        assert!(p1 < p0 / 2.0, "bucketed {p1} vs plain {p0}");
        assert_ne!(bucket.epoch(0), bucket.epoch(1));
        assert_eq!(bucket.epoch(3), bucket.epoch(3));
    }

    #[test]
    fn streams_cycle_independently() {
        let ft = BatchSampler::new(vec![1; 10], 3, 9, None).unwrap();
        let safe = BatchSampler::new(vec![1; 4], 2, 9, None).unwrap();
        let mut s = BilevelStreams::new(ft, safe).unwrap();
        let mut seen_safe = vec![0usize; 4];
        for _ in 0..4 {
            let (f, sf) = s.next_pair();
            assert!(!f.is_empty() && sf.len() == 2);
            for i in sf {
                seen_safe[i] += 1;
            }
        }
        // 4 steps of 2 = two full safe epochs: each safe sample twice.
        assert_eq!(seen_safe, vec![2; 4]);
        assert_eq!(s.epochs(), (0, 1));
        let drop = BatchSampler::new(vec![1; 2], 3, 0, None)
            .unwrap()
            .with_drop_last(true);
        assert!(
            BilevelStreams::new(drop, BatchSampler::new(vec![1], 1, 0, None).unwrap()).is_err()
        );
    }
}
