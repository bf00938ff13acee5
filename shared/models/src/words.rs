//! English word frequencies: how rare a word is, on the Zipf scale (log10 of its
//! frequency per billion words: "the" is 7.7, "algorithm" 4.0, "chloroplast" 2.3).

use std::collections::HashMap;

use thaw_snapshot::Architecture;

use crate::error::expect_architecture;
use crate::ModelError;

/// A word -> Zipf table restored from a `word-frequencies` snapshot.
#[derive(Debug)]
pub struct WordFrequencies {
    zipf: HashMap<Box<str>, f32>,
    name: String,
}

impl WordFrequencies {
    /// Restores the snapshot at `dir` and indexes its `words.tsv`.
    pub fn restore(dir: &std::path::Path) -> Result<Self, ModelError> {
        let snapshot = thaw_snapshot::restore(dir)?;
        let meta = &snapshot.meta;
        expect_architecture(meta, Architecture::WordFrequencies, "word-frequencies")?;
        let text =
            std::str::from_utf8(snapshot.weights()).map_err(|e| ModelError::InvalidConfig {
                name: meta.name.clone(),
                reason: format!("words.tsv is not UTF-8: {e}"),
            })?;
        let mut zipf = HashMap::with_capacity(text.len() / 12);
        for line in text.lines() {
            if let Some((word, z)) = line.split_once('\t') {
                if let Ok(z) = z.parse::<f32>() {
                    // The list is most frequent first; keep the first (highest) value.
                    zipf.entry(Box::from(word)).or_insert(z);
                }
            }
        }
        Ok(Self {
            zipf,
            name: meta.name.clone(),
        })
    }

    /// The snapshot's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A word's Zipf frequency (lower-cased lookup); 0 for a word the list does not know.
    pub fn zipf(&self, word: &str) -> f32 {
        self.zipf
            .get(word.to_lowercase().as_str())
            .copied()
            .unwrap_or(0.0)
    }

    /// Words known.
    pub fn len(&self) -> usize {
        self.zipf.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.zipf.is_empty()
    }
}
