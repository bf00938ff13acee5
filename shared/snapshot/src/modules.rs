//! A sentence-transformers folder's `modules.json`: the pipeline after the transformer.
//!
//! thaw runs Transformer → Pooling → (Dense) → (Normalize), the layout of every
//! embedder its users ship (all-MiniLM, e5, bge, sentence-t5, INSTRUCTOR). A module it does
//! not run is refused at build time: an embedding computed without it would be wrong
//! without any error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde_json::Value;

use crate::build::{convert, is_float, read_json, write_tensors};
use crate::{Dense, DenseActivation, SnapshotError, WeightDtype, SAFETENSORS_FILE};

/// What the modules after the transformer do.
#[derive(Debug, Default)]
pub(crate) struct Modules {
    /// A Normalize module ends the pipeline.
    pub normalize: bool,
    /// A Dense module, and the folder holding its weights.
    pub dense: Option<(Dense, PathBuf)>,
    /// The Pooling module's folder.
    pub pooling_dir: Option<PathBuf>,
}

/// Reads `modules.json` (absent: a bare transformer, pooled by the defaults).
pub(crate) fn read(model_dir: &Path) -> Result<Modules, SnapshotError> {
    let path = model_dir.join("modules.json");
    if !path.exists() {
        return Ok(Modules::default());
    }
    let invalid = |why: String| SnapshotError::InvalidBuild(format!("{}: {why}", path.display()));
    let list = read_json(&path)?;
    let list = list
        .as_array()
        .ok_or_else(|| invalid("not a list of modules".into()))?;
    let mut out = Modules::default();
    // The order thaw runs them in; a module out of it would run in another order than
    // sentence-transformers runs it.
    let stage_of = |short: &str| match short {
        "Transformer" => Some(0),
        "Pooling" => Some(1),
        "Dense" => Some(2),
        "Normalize" => Some(3),
        _ => None,
    };
    let mut stage = 0;
    for module in list {
        let kind = module.get("type").and_then(Value::as_str).unwrap_or("");
        let short = kind.rsplit('.').next().unwrap_or(kind);
        let rel = module.get("path").and_then(Value::as_str).unwrap_or("");
        if !Path::new(rel)
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            return Err(invalid(format!(
                "module path {rel:?} leaves the model folder"
            )));
        }
        let dir = model_dir.join(rel);
        if let Some(s) = stage_of(short) {
            if s < stage {
                return Err(invalid(format!(
                    "module {short} comes after a later one; thaw runs Transformer, Pooling, Dense, Normalize in that order"
                )));
            }
            stage = s;
        }
        match short {
            "Transformer" => {}
            "Pooling" => out.pooling_dir = Some(dir),
            "Normalize" => out.normalize = true,
            "Dense" if out.dense.is_none() => out.dense = Some((read_dense(&dir)?, dir)),
            "Dense" => return Err(invalid("more than one Dense module".into())),
            other => {
                return Err(invalid(format!(
                    "module {other:?} is not one thaw runs (Transformer, Pooling, Dense, Normalize)"
                )))
            }
        }
    }
    if let Some(dir) = &out.pooling_dir {
        let cfg = dir.join("config.json");
        if cfg.exists() && read_json(&cfg)?.get("include_prompt") == Some(&Value::Bool(false)) {
            return Err(invalid(
                "the Pooling module excludes the prompt (include_prompt = false); thaw pools every token"
                    .into(),
            ));
        }
    }
    Ok(out)
}

fn read_dense(dir: &Path) -> Result<Dense, SnapshotError> {
    let path = dir.join("config.json");
    let cfg = read_json(&path)?;
    let invalid = |why: String| SnapshotError::InvalidBuild(format!("{}: {why}", path.display()));
    let size = |key: &str| {
        cfg.get(key)
            .and_then(Value::as_u64)
            .map(|n| n as usize)
            .ok_or_else(|| invalid(format!("no {key}")))
    };
    let activation = match cfg
        .get("activation_function")
        .and_then(Value::as_str)
        .unwrap_or("torch.nn.modules.activation.Tanh")
    {
        a if a.ends_with(".Identity") => DenseActivation::Identity,
        a if a.ends_with(".Tanh") => DenseActivation::Tanh,
        other => {
            return Err(invalid(format!(
                "activation {other:?} is not supported (Identity or Tanh)"
            )))
        }
    };
    Ok(Dense {
        in_features: size("in_features")?,
        out_features: size("out_features")?,
        bias: cfg.get("bias").and_then(Value::as_bool).unwrap_or(true),
        activation,
    })
}

/// Adds the Dense module's `linear.weight` (and `linear.bias`) to the snapshot's
/// safetensors at `dst` under [`Dense::PREFIX`], in `dtype`, checking their shapes.
pub(crate) fn append_dense(
    dst: &Path,
    dense_dir: &Path,
    dense: &Dense,
    dtype: WeightDtype,
) -> Result<(), SnapshotError> {
    let src = dense_dir.join(SAFETENSORS_FILE);
    let invalid_src = |e: safetensors::SafeTensorError| SnapshotError::InvalidSafetensors {
        path: src.clone(),
        reason: e.to_string(),
    };
    let target = match dtype {
        WeightDtype::F16 => Dtype::F16,
        WeightDtype::Bf16 => Dtype::BF16,
        _ => Dtype::F32,
    };
    let main_bytes = std::fs::read(dst).map_err(|e| SnapshotError::io(dst, e))?;
    let dense_bytes = std::fs::read(&src).map_err(|e| SnapshotError::io(&src, e))?;
    let main = safetensors::SafeTensors::deserialize(&main_bytes).map_err(invalid_src)?;
    let extra = safetensors::SafeTensors::deserialize(&dense_bytes).map_err(invalid_src)?;
    let mut out: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = main
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    let mut wanted = vec![("weight", vec![dense.out_features, dense.in_features])];
    if dense.bias {
        wanted.push(("bias", vec![dense.out_features]));
    }
    for (part, shape) in wanted {
        let view = extra
            .tensor(&format!("linear.{part}"))
            .map_err(invalid_src)?;
        if view.shape() != shape.as_slice() || !is_float(view.dtype()) {
            return Err(SnapshotError::InvalidBuild(format!(
                "{}: linear.{part} is {:?} {:?}, expected float {shape:?} from its config.json",
                src.display(),
                view.dtype(),
                view.shape()
            )));
        }
        out.insert(
            format!("{}.{part}", Dense::PREFIX),
            (target, shape, convert(view.data(), view.dtype(), target)),
        );
    }
    write_tensors(dst, &out, |e| SnapshotError::InvalidSafetensors {
        path: dst.to_owned(),
        reason: e.to_string(),
    })
}
