//! Building a `word-frequencies` snapshot from wordfreq's data.
//!
//! wordfreq (PyPI, 3.1.1) ships each language as `<size>_<lang>.msgpack.gz`: a msgpack
//! list whose first element is the header `{"format": "cB", "version": 1}` and whose
//! element `1 + i` lists the words whose frequency is 10^(−i/100) (i centibels below 1).
//! The snapshot stores them as `words.tsv`, `word<TAB>zipf` per line, most frequent first,
//! where zipf = log10(frequency per billion words) = 9 − i/100.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write as _};
use std::path::Path;

use serde_json::json;

use crate::build::{finish, invalid_input as invalid, BuildOptions};
use crate::meta::FORMAT_VERSION;
use crate::{Architecture, SnapshotError, SnapshotMeta, WeightDtype, WORDS_FILE};

/// Writes `words.tsv` and `snapshot.json` into `dir`.
pub(crate) fn write_snapshot(
    src: &Path,
    dir: &Path,
    opts: &BuildOptions,
) -> Result<SnapshotMeta, SnapshotError> {
    let file = File::open(src).map_err(|e| SnapshotError::io(src, e))?;
    let mut gz = BufReader::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let value = rmpv::decode::read_value(&mut gz).map_err(|e| invalid(src, e))?;
    let list = value
        .as_array()
        .ok_or_else(|| invalid(src, "not a msgpack list"))?;
    let header_ok = list.first().and_then(|h| h.as_map()).is_some_and(|m| {
        m.iter()
            .any(|(k, v)| k.as_str() == Some("format") && v.as_str() == Some("cB"))
    });
    if !header_ok {
        return Err(invalid(src, "missing the {\"format\": \"cB\"} header"));
    }
    let out_path = dir.join(WORDS_FILE);
    let out = File::create(&out_path).map_err(|e| SnapshotError::io(&out_path, e))?;
    let mut out = BufWriter::new(out);
    let (mut words, mut min_zipf) = (0usize, 9.0f64);
    for (i, bucket) in list[1..].iter().enumerate() {
        let zipf = 9.0 - i as f64 / 100.0;
        for w in bucket.as_array().into_iter().flatten() {
            let Some(w) = w.as_str() else { continue };
            if w.contains(['\t', '\n']) {
                continue;
            }
            writeln!(out, "{w}\t{zipf:.2}").map_err(|e| SnapshotError::io(&out_path, e))?;
            words += 1;
            min_zipf = min_zipf.min(zipf);
        }
    }
    out.flush().map_err(|e| SnapshotError::io(&out_path, e))?;
    out.get_ref()
        .sync_all()
        .map_err(|e| SnapshotError::io(&out_path, e))?;
    let meta = SnapshotMeta {
        format_version: FORMAT_VERSION,
        name: opts.name.clone(),
        architecture: Architecture::WordFrequencies,
        dtype: WeightDtype::F32,
        model_config: json!({
            "format": "word<TAB>zipf, most frequent first",
            "words": words,
            "min_zipf": min_zipf,
            "source_file": src.file_name().map(|n| n.to_string_lossy().into_owned()),
        }),
        pooling: None,
        normalize: false,
        dense: None,
        max_seq_length: 0,
        source: opts.source.clone(),
        files: Vec::new(),
    };
    finish(dir, meta, &[WORDS_FILE])
}
