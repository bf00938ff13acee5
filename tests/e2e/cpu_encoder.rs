//! The CPU encoder (`thaw_models::cpu`) against candle-transformers' BERT, on every
//! instruction set this machine has, and the INT8 snapshot's quality against f32.
//!
//! - Every set (portable, AVX2, AVX-512) gives the hidden states candle-transformers'
//!   `BertModel` gives for the same weights and tokens, within 1e-4, for MiniLM (head
//!   size 32, one whole kernel panel) and the tiny cross-encoder (hidden 32, head size
//!   16: the partial-panel paths).
//! - INT8 (`--dtype int8`): cosine ≥ 0.99 against the sentence-transformers golden
//!   embeddings on every case, and against thaw f32 on every query and document of the
//!   labelled rerank set, which it ranks as f32 does.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use thaw_models::cpu::isa::Isa;
use thaw_models::cpu::{CpuBert, Sequence};
use thaw_models::{EncodeOptions, SentenceEncoder};
use thaw_tests::{cosine, fixture, snapshot_dir};

fn restore(name: &str) -> Arc<thaw_snapshot::RestoredSnapshot> {
    Arc::new(thaw_snapshot::restore(&snapshot_dir(name)).expect("restore"))
}

fn config(s: &thaw_snapshot::RestoredSnapshot) -> candle_transformers::models::bert::Config {
    serde_json::from_value(s.meta.model_config.clone()).expect("bert config")
}

/// The reference: candle-transformers' BertModel over a padded batch, unpadded per row.
fn reference(
    s: &thaw_snapshot::RestoredSnapshot,
    encodings: &[tokenizers::Encoding],
) -> Vec<Vec<f32>> {
    let vb = candle_nn::VarBuilder::from_slice_safetensors(s.weights(), DType::F32, &Device::Cpu)
        .expect("var builder");
    let cfg = config(s);
    let vb = if s.meta.architecture == thaw_snapshot::Architecture::BertCrossEncoder {
        vb.pp("bert")
    } else {
        vb
    };
    let model = candle_transformers::models::bert::BertModel::load(vb, &cfg).expect("load");
    let longest = encodings
        .iter()
        .map(|e| e.get_ids().len())
        .max()
        .unwrap_or(0);
    let pad = |f: &dyn Fn(&tokenizers::Encoding) -> Vec<u32>| {
        let rows: Vec<u32> = encodings
            .iter()
            .flat_map(|e| {
                let mut v = f(e);
                v.resize(longest, 0);
                v
            })
            .collect();
        Tensor::from_vec(rows, (encodings.len(), longest), &Device::Cpu).expect("tensor")
    };
    let ids = pad(&|e| e.get_ids().to_vec());
    let types = pad(&|e| e.get_type_ids().to_vec());
    let mask = pad(&|e| vec![1; e.get_ids().len()]);
    let hidden = model
        .forward(&ids, &types, Some(&mask))
        .and_then(|h| h.to_vec3::<f32>())
        .expect("forward");
    hidden
        .iter()
        .zip(encodings)
        .map(|(rows, e)| rows[..e.get_ids().len()].concat())
        .collect()
}

fn encodings(s: &thaw_snapshot::RestoredSnapshot, pairs: bool) -> Vec<tokenizers::Encoding> {
    let path = s.tokenizer_path().expect("tokenizer");
    let tok = tokenizers::Tokenizer::from_file(path).expect("tokenizer parses");
    let texts = [
        "hi",
        "How do I reset my password?",
        "Recursion is when a function calls itself until it reaches a base case, which stops it.",
        &"Serverless platforms start a container when a request arrives. ".repeat(9),
    ];
    texts
        .iter()
        .map(|t| {
            if pairs {
                tok.encode(("what is recursion?", *t), true)
            } else {
                tok.encode(*t, true)
            }
            .expect("encode")
        })
        .collect()
}

fn sequences(enc: &[tokenizers::Encoding]) -> Vec<Sequence<'_>> {
    enc.iter()
        .map(|e| Sequence {
            ids: e.get_ids(),
            type_ids: e.get_type_ids(),
        })
        .collect()
}

fn check_every_isa(name: &str, pairs: bool) {
    let s = restore(name);
    let bert: CpuBert = thaw_models::cpu::load(Arc::clone(&s), &config(&s)).expect("cpu load");
    let enc = encodings(&s, pairs);
    let want = reference(&s, &enc);
    let seqs = sequences(&enc);
    let mut checked = Vec::new();
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
        if isa > Isa::detected() {
            continue;
        }
        let got = bert.forward_with(isa, &seqs).expect("forward");
        for (i, want) in want.iter().enumerate() {
            let rows = got.rows(i);
            assert_eq!(rows.len(), want.len(), "{name} {isa:?} sequence {i} length");
            let worst = rows
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-4,
                "{name} {isa:?} sequence {i}: max |Δ| {worst}"
            );
        }
        checked.push(isa);
    }
    assert!(
        checked.contains(&Isa::Portable),
        "the portable path always runs"
    );
}

#[test]
fn every_instruction_set_gives_candle_transformers_hidden_states_for_minilm() {
    check_every_isa("minilm-l6", false);
}

#[test]
fn every_instruction_set_gives_candle_transformers_hidden_states_for_a_16_wide_head() {
    check_every_isa("tiny-cross-encoder", true);
}

#[test]
fn every_instruction_set_keeps_int8_hidden_states_close_to_f32() {
    let (q, f) = (restore("minilm-l6-int8"), restore("minilm-l6"));
    let int8 = thaw_models::cpu::load(Arc::clone(&q), &config(&q)).expect("int8 load");
    let f32b = thaw_models::cpu::load(Arc::clone(&f), &config(&f)).expect("f32 load");
    assert!(
        int8.is_int8() && !f32b.is_int8(),
        "the snapshots load as their dtypes"
    );
    let enc = encodings(&q, false);
    let seqs = sequences(&enc);
    let want = f32b.forward_with(Isa::Portable, &seqs).expect("f32");
    let portable = int8.forward_with(Isa::Portable, &seqs).expect("portable");
    for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
        if isa > Isa::detected() {
            continue;
        }
        let got = int8.forward_with(isa, &seqs).expect("forward");
        for i in 0..seqs.len() {
            // Per token state, not just pooled: every row keeps its direction.
            let cos = cosine(got.rows(i), want.rows(i));
            assert!(
                cos >= 0.99,
                "{isa:?} INT8 sequence {i}: cosine {cos} to f32"
            );
            // The i32 sums are exact everywhere; FMA rounding upstream may flip a
            // quantization step, never more than that.
            let same = cosine(got.rows(i), portable.rows(i));
            assert!(
                same >= 0.999,
                "{isa:?} INT8 sequence {i}: cosine {same} to portable"
            );
        }
    }
}

#[test]
fn a_token_outside_the_vocabulary_is_a_typed_error_not_a_panic() {
    let s = restore("minilm-l6");
    let bert = thaw_models::cpu::load(Arc::clone(&s), &config(&s)).expect("cpu load");
    let ids = [101u32, 9_999_999, 102];
    let err = bert
        .forward(&[Sequence {
            ids: &ids,
            type_ids: &[0, 0, 0],
        }])
        .expect_err("out of range");
    assert!(
        matches!(err, thaw_models::ModelError::BadInput { index: 0, .. }),
        "{err}"
    );
    let err = bert
        .forward(&[Sequence {
            ids: &[101, 102],
            type_ids: &[0],
        }])
        .expect_err("ragged");
    assert!(
        matches!(err, thaw_models::ModelError::BadInput { .. }),
        "{err}"
    );
}

#[derive(Deserialize)]
struct Golden {
    cases: Vec<GoldenCase>,
}

#[derive(Deserialize)]
struct GoldenCase {
    text: String,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct Labelled {
    cases: Vec<LabelledCase>,
}

#[derive(Deserialize)]
struct LabelledCase {
    query: String,
    relevant: serde_json::Value,
    documents: Vec<String>,
}

fn encoder(name: &str) -> SentenceEncoder {
    SentenceEncoder::restore(&snapshot_dir(name), &Device::Cpu).expect("load")
}

#[test]
fn int8_keeps_cosine_099_on_every_golden_case() {
    let golden: Golden =
        serde_json::from_slice(&std::fs::read(fixture("minilm-reference.json")).expect("fixture"))
            .expect("parses");
    let int8 = encoder("minilm-l6-int8");
    let texts: Vec<&str> = golden.cases.iter().map(|c| c.text.as_str()).collect();
    let got = int8
        .encode(&texts, EncodeOptions::default())
        .expect("encode");
    for (case, emb) in golden.cases.iter().zip(&got.embeddings) {
        let cos = cosine(emb, &case.embedding);
        assert!(cos >= 0.99, "cosine {cos} < 0.99 for {:?}", case.text);
    }
}

#[test]
fn int8_keeps_cosine_099_and_the_ranking_on_the_labelled_rerank_set() {
    let set: Labelled =
        serde_json::from_slice(&std::fs::read(fixture("rerank-labelled.json")).expect("fixture"))
            .expect("parses");
    let (f32e, int8) = (encoder("minilm-l6"), encoder("minilm-l6-int8"));
    let opts = EncodeOptions::default();
    for case in &set.cases {
        let mut texts = vec![case.query.as_str()];
        texts.extend(case.documents.iter().map(String::as_str));
        let want = f32e.encode(&texts, opts).expect("f32").embeddings;
        let got = int8.encode(&texts, opts).expect("int8").embeddings;
        for (t, (g, w)) in texts.iter().zip(got.iter().zip(&want)) {
            let cos = cosine(g, w);
            assert!(cos >= 0.99, "cosine {cos} < 0.99 for {t:?}");
        }
        let best = |e: &[Vec<f32>]| {
            (1..e.len())
                .max_by(|&a, &b| cosine(&e[0], &e[a]).total_cmp(&cosine(&e[0], &e[b])))
                .map(|i| i - 1)
        };
        let relevant = case
            .relevant
            .as_str()
            .and_then(|s| s.parse().ok())
            .or(case.relevant.as_u64().map(|n| n as usize));
        assert_eq!(
            best(&got),
            best(&want),
            "INT8 ranks {:?} differently",
            case.query
        );
        assert_eq!(
            best(&got),
            relevant,
            "INT8 misses the relevant document for {:?}",
            case.query
        );
    }
}
