//! Property tests: every sample appears once per epoch; ids survive
//! shuffling, bucketing, filtering and batching; masks never cover prompt or
//! padding tokens.

use std::collections::HashMap;

use proptest::prelude::*;
use seal_data::batch::{BatchSampler, PackedBatch, PaddedBatch};
use seal_data::mixture::{mix_pool, MixSpec};
use seal_data::testing::chatml_tokenizer;
use seal_data::tokenize::{tokenize_samples, OverLengthPolicy, TokenizeConfig, TokenizedSample};
use seal_data::{Label, Message, Sample};

fn tokenized(lengths: &[(usize, usize)]) -> Vec<TokenizedSample> {
    lengths
        .iter()
        .enumerate()
        .map(|(i, &(prompt, resp))| TokenizedSample {
            id: format!("p:{i:05}"),
            index: i,
            label: Some(if i % 7 == 0 {
                Label::Harmful
            } else {
                Label::Benign
            }),
            input_ids: (0..(prompt + resp) as u32).map(|t| 100 + t).collect(),
            response_start: prompt,
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn each_sample_once_per_epoch(
        lengths in prop::collection::vec((1usize..40, 1usize..40), 1..120),
        batch in 1usize..9,
        bucket in prop::option::of(1usize..6),
        seed in any::<u64>(),
        epoch in 0u64..5,
    ) {
        let data = tokenized(&lengths);
        let lens: Vec<usize> = data.iter().map(TokenizedSample::len).collect();
        let sampler = BatchSampler::new(lens, batch, seed, bucket).unwrap();
        let batches = sampler.epoch(epoch);
        let mut count = vec![0usize; data.len()];
        for b in &batches {
            prop_assert!(!b.is_empty() && b.len() <= batch);
            for &i in b {
                count[i] += 1;
            }
        }
        prop_assert!(count.iter().all(|&c| c == 1));
        prop_assert_eq!(&batches, &sampler.epoch(epoch));

        // Batches carry the right ids and slots; masks cover exactly the
        // response tokens, never prompt or padding.
        for b in &batches {
            let pb = PaddedBatch::from_rows(&data, b, 0).unwrap();
            for (r, &row) in b.iter().enumerate() {
                let s = &data[row];
                prop_assert_eq!(&pb.ids[r], &s.id);
                prop_assert_eq!(pb.slots[r], s.index);
                for t in 0..pb.seq_len {
                    let k = r * pb.seq_len + t;
                    let expect = t < s.len() && t >= s.response_start;
                    prop_assert_eq!(pb.loss_mask[k] == 1, expect);
                    if pb.attention_mask[k] == 0 {
                        prop_assert_eq!(pb.loss_mask[k], 0);
                        prop_assert_eq!(pb.input_ids[k], pb.pad_id);
                    }
                }
            }
            let packed = PackedBatch::from_rows(&data, b).unwrap();
            prop_assert_eq!(&packed.ids, &pb.ids);
            let masked: i64 = packed.loss_mask.iter().sum();
            prop_assert_eq!(masked, pb.loss_mask.iter().sum::<i64>());
            for (r, &row) in b.iter().enumerate() {
                let (lo, hi) = (packed.cu_seqlens[r] as usize, packed.cu_seqlens[r + 1] as usize);
                prop_assert_eq!(hi - lo, data[row].len());
                prop_assert_eq!(packed.position_ids[lo], 0);
            }
        }
    }

    #[test]
    fn ids_survive_filtering_and_mixing(
        n_benign in 10usize..60,
        n_harm in 5usize..20,
        keep_mod in 2usize..5,
        seed in any::<u64>(),
    ) {
        let mk = |src: &str, i: usize| Sample {
            id: format!("{src}:{i:05}"),
            source: src.into(),
            label: None,
            messages: vec![Message::user(format!("{src} question {i}")), Message::assistant(format!("answer {i}"))],
            reference: None,
            prefill: None,
        };
        let benign: Vec<Sample> = (0..n_benign).map(|i| mk("b", i)).collect();
        let harmful: Vec<Sample> = (0..n_harm).map(|i| mk("h", i)).collect();
        let pool = mix_pool(&benign, &harmful, MixSpec { size: 10, poison_ratio: 0.2, seed }).unwrap();
        // Each sample keeps the id it had in its source, whatever was drawn.
        for s in &pool {
            let (src, pos) = s.id.split_once(':').unwrap();
            let pos: usize = pos.parse().unwrap();
            prop_assert_eq!(&s.messages[1].content, &format!("answer {pos}"));
            prop_assert_eq!(s.label, Some(if src == "h" { Label::Harmful } else { Label::Benign }));
        }
        // Filtering some samples out changes no other sample's id or slot
        // meaning: tokenised samples map back to the pool through `index`.
        let kept: Vec<Sample> = pool.iter().enumerate().filter(|(i, _)| i % keep_mod != 0).map(|(_, s)| s.clone()).collect();
        let tok = chatml_tokenizer(None).unwrap();
        let data = tokenize_samples(&tok, &kept, &TokenizeConfig::default()).unwrap();
        let by_id: HashMap<&str, &Sample> = pool.iter().map(|s| (s.id.as_str(), s)).collect();
        for t in &data.samples {
            prop_assert_eq!(&kept[t.index].id, &t.id);
            let original = by_id[t.id.as_str()];
            let resp = tok.decode(t.response_ids(), false).unwrap();
            prop_assert_eq!(resp, format!("{}<|im_end|>", original.response().unwrap()));
        }
    }

    #[test]
    fn truncation_never_masks_prompt(
        prompt_len in 1usize..200,
        resp_len in 1usize..80,
        max_len in 8usize..150,
    ) {
        let tok = chatml_tokenizer(None).unwrap();
        let s = Sample {
            id: "x:0".into(),
            source: "x".into(),
            label: None,
            messages: vec![Message::user("p".repeat(prompt_len)), Message::assistant("z".repeat(resp_len))],
            reference: None,
            prefill: None,
        };
        let mut cfg = TokenizeConfig::default();
        cfg.max_len = max_len;
        cfg.policy = OverLengthPolicy::TruncateLeft;
        let d = tokenize_samples(&tok, std::slice::from_ref(&s), &cfg).unwrap();
        prop_assert_eq!(d.summary.kept + d.summary.dropped_response_too_long, 1);
        for t in &d.samples {
            prop_assert!(t.len() <= max_len);
            prop_assert!(t.response_start >= 1);
            let resp = tok.decode(t.response_ids(), false).unwrap();
            prop_assert_eq!(resp, format!("{}<|im_end|>", "z".repeat(resp_len)));
            prop_assert!(!tok.decode(t.prompt_ids(), false).unwrap().contains('z'));
        }
    }
}
