//! Golden parity with sentence-transformers (tests/fixtures/minilm-reference.json):
//! cosine ≥ 0.9999 and max |Δ| ≤ 1e-4 per case, alone and all in one padded batch.

use serde::Deserialize;
use thaw_models::{EncodeOptions, SentenceEncoder};
use thaw_tests::{cosine, fixture, snapshot_dir};

#[derive(Debug, Deserialize)]
struct Reference {
    max_seq_length: usize,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
struct Case {
    text: String,
    tokens_after_truncation: usize,
    embedding: Vec<f32>,
}

fn load() -> (SentenceEncoder, Reference) {
    let bytes = std::fs::read(fixture("minilm-reference.json")).expect("fixture");
    let reference: Reference = serde_json::from_slice(&bytes).expect("fixture parses");
    let snapshot = thaw_snapshot::restore(&snapshot_dir("minilm-l6")).expect("restore");
    let encoder =
        SentenceEncoder::load(&snapshot, &thaw_models::device::default_device()).expect("load");
    (encoder, reference)
}

fn assert_close(text: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "dims for {text:?}");
    let cos = cosine(got, want);
    let max_abs = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(cos >= 0.9999, "cosine {cos} < 0.9999 for {text:?}");
    assert!(
        max_abs <= 1e-4,
        "max abs diff {max_abs} > 1e-4 for {text:?}"
    );
}

#[test]
fn every_case_matches_sentence_transformers_alone() {
    let (encoder, reference) = load();
    assert_eq!(encoder.max_seq_length(), reference.max_seq_length);
    assert!(
        reference.cases.iter().any(|c| c.text.is_empty()),
        "fixture keeps the empty string"
    );
    assert!(
        reference
            .cases
            .iter()
            .any(|c| c.tokens_after_truncation == 256),
        "fixture keeps a truncated case"
    );
    for case in &reference.cases {
        let out = encoder
            .encode(&[case.text.as_str()], EncodeOptions::default())
            .expect("encode");
        assert_eq!(
            out.tokens[0], case.tokens_after_truncation,
            "tokens for {:?}",
            case.text
        );
        assert_close(&case.text, &out.embeddings[0], &case.embedding);
    }
}

#[test]
fn one_padded_batch_of_every_case_matches_too() {
    let (encoder, reference) = load();
    let texts: Vec<&str> = reference.cases.iter().map(|c| c.text.as_str()).collect();
    let out = encoder
        .encode(&texts, EncodeOptions::default())
        .expect("encode");
    for (case, got) in reference.cases.iter().zip(&out.embeddings) {
        assert_close(&case.text, got, &case.embedding);
    }
}

#[test]
fn refusing_truncation_names_the_long_input() {
    let (encoder, reference) = load();
    let long = reference
        .cases
        .iter()
        .find(|c| c.tokens_after_truncation == 256)
        .expect("long case");
    let err = encoder
        .encode(
            &["short", long.text.as_str()],
            EncodeOptions {
                normalize: true,
                truncate: false,
            },
        )
        .expect_err("over-length input must be refused");
    match err {
        thaw_models::ModelError::InputTooLong { index, tokens, max } => {
            assert_eq!(index, 1);
            assert_eq!(max, 256);
            assert!(tokens > 256, "reported {tokens} tokens");
        }
        other => panic!("wrong error {other:?}"),
    }
}
