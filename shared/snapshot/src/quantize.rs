//! `--dtype int8`: BERT encoder projections quantized per output channel.
//!
//! Each projection weight `W` (`n × k`, row `n` one output channel) becomes `i8` values
//! `round(W[n, k] / s[n])` with `s[n] = max_k |W[n, k]| / 127`, stored under the weight's
//! own name, and `s` as f32 under `<name>_scale`. Symmetric per channel keeps zero exact
//! and costs one multiply per output at run time; a per-tensor scale would let the one
//! channel with the largest weight set every channel's resolution. Every other tensor
//! (embeddings, layer norms, biases, heads) stays f32: they are a small part of the
//! arithmetic and the first place quantization error would show.

/// The suffixes of the six projections of a BERT encoder layer.
const PROJECTIONS: [&str; 5] = [
    "attention.self.query.weight",
    "attention.self.key.weight",
    "attention.self.value.weight",
    "intermediate.dense.weight",
    // Also matches `attention.output.dense.weight`.
    "output.dense.weight",
];

/// Whether `name` (with `shape`) is an encoder projection INT8 applies to.
pub(crate) fn is_projection(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2
        && name.contains("encoder.layer.")
        && PROJECTIONS.iter().any(|p| name.ends_with(p))
}

/// The name the scales of weight `name` are stored under.
pub(crate) fn scale_name(name: &str) -> String {
    format!("{name}_scale")
}

/// Quantizes a row-major `rows × cols` f32 matrix per row: the `i8` values and one scale
/// per row. A row of zeros (or of values too small for a normal scale) gets scale 1 and
/// all-zero values. A NaN or infinite weight is refused: quantizing it would hide it.
pub(crate) fn quantize_rows(values: &[f32], cols: usize) -> Result<(Vec<i8>, Vec<f32>), usize> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(i);
    }
    let mut q = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(values.len() / cols.max(1));
    for row in values.chunks(cols.max(1)) {
        let max = row.iter().fold(0f32, |m, &v| m.max(v.abs()));
        let scale = if max / 127.0 >= f32::MIN_POSITIVE {
            max / 127.0
        } else {
            1.0
        };
        q.extend(
            row.iter()
                .map(|&v| (v / scale).round().clamp(-127.0, 127.0) as i8),
        );
        scales.push(scale);
    }
    Ok((q, scales))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_row_gets_its_own_scale_and_round_trips_within_half_a_step() {
        let w = [0.5f32, -1.0, 0.25, 0.0, 100.0, -3.0, 0.0, 0.0, 0.0];
        let (q, s) = quantize_rows(&w, 3).expect("finite");
        assert_eq!(s, vec![1.0 / 127.0, 100.0 / 127.0, 1.0]);
        assert_eq!(&q[..3], &[64, -127, 32]);
        assert_eq!(&q[6..], &[0, 0, 0]);
        for (i, (&v, &qv)) in w.iter().zip(&q).enumerate() {
            let back = f32::from(qv) * s[i / 3];
            assert!((back - v).abs() <= s[i / 3] / 2.0 + 1e-6, "{v} -> {back}");
        }
    }

    #[test]
    fn a_non_finite_weight_is_refused_and_a_denormal_row_is_zero() {
        assert_eq!(quantize_rows(&[0.0, f32::NAN, 1.0], 3), Err(1));
        assert_eq!(quantize_rows(&[f32::INFINITY], 1), Err(0));
        let (q, s) = quantize_rows(&[1e-44, -1e-44], 2).expect("finite");
        assert_eq!((q, s), (vec![0, 0], vec![1.0]));
    }

    #[test]
    fn only_encoder_projections_are_quantized() {
        assert!(is_projection(
            "encoder.layer.0.attention.self.query.weight",
            &[4, 4]
        ));
        assert!(is_projection(
            "bert.encoder.layer.11.output.dense.weight",
            &[4, 16]
        ));
        assert!(is_projection(
            "encoder.layer.3.attention.output.dense.weight",
            &[4, 4]
        ));
        assert!(!is_projection(
            "encoder.layer.0.output.LayerNorm.weight",
            &[4]
        ));
        assert!(!is_projection("encoder.layer.0.output.dense.bias", &[4]));
        assert!(!is_projection(
            "embeddings.word_embeddings.weight",
            &[30, 4]
        ));
        assert!(!is_projection("bert.pooler.dense.weight", &[4, 4]));
        assert!(!is_projection("classifier.weight", &[1, 4]));
    }
}
