//! BERT's encoder on candle tensors, for GPUs (CPUs run [`crate::cpu`]; [`Backend`]
//! picks): the same weights and the same function as
//! `candle_transformers::models::bert::BertModel`.
//!
//! What differs from candle-transformers' BERT, and why:
//!
//! - **GELU** is [`gelu::gelu_erf`]: the exact erf form, vectorised. candle's scalar
//!   `erf` was about a quarter of a batched forward pass.
//! - **One QKV projection:** query, key and value weights are concatenated at load, so
//!   each layer runs one matrix multiply of width `3 × hidden` instead of three, and the
//!   heads are split with one copy instead of three.
//! - **The 1/sqrt(head size) scale is folded into the query weights** at load, which
//!   saves a pass over every attention score matrix.
//! - **Softmax** is candle's last-dimension kernel, not the generic composition.
//!
//! Weights load under the same names (`embeddings.*`, `encoder.layer.N.*`, optionally
//! under `bert.` or the model type), so every snapshot that loaded before loads now.

mod backend;
pub(crate) mod gelu;

pub(crate) use backend::Backend;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Linear, VarBuilder};
pub use candle_transformers::models::bert::{Config, HiddenAct};

/// A BERT encoder: token ids in, the last hidden state out.
#[derive(Debug)]
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
}

impl BertModel {
    /// Loads the weights, under `bert.`, `<model_type>.` or no prefix.
    pub fn load(vb: VarBuilder, config: &Config) -> Result<Self> {
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            match &config.model_type {
                Some(t)
                    if vb.contains_tensor(&format!("{t}.embeddings.word_embeddings.weight")) =>
                {
                    vb.pp(t)
                }
                _ => vb,
            }
        };
        let embeddings = Embeddings::load(vb.pp("embeddings"), config)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { embeddings, layers })
    }

    /// `(rows, tokens)` ids, type ids and an optional 0/1 attention mask to `(rows,
    /// tokens, hidden)`. Masked positions neither attend nor are attended to.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut hidden = self.embeddings.forward(input_ids, token_type_ids)?;
        let mask = match attention_mask {
            Some(m) => m.clone(),
            None => input_ids.ones_like()?,
        };
        let bias = additive_mask(&mask, hidden.dtype())?;
        for layer in &self.layers {
            hidden = layer.forward(&hidden, &bias)?;
        }
        Ok(hidden)
    }
}

/// `(rows, tokens)` 0/1 to `(rows, 1, 1, tokens)`: 0 where attended, the dtype's lowest
/// value where masked, added to the scores before softmax.
fn additive_mask(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let mask = mask.to_dtype(dtype)?.unsqueeze(1)?.unsqueeze(1)?;
    let lowest = Tensor::new(f32::MIN, mask.device())?.to_dtype(dtype)?;
    (mask.ones_like()? - &mask)?.broadcast_mul(&lowest)
}

#[derive(Debug)]
struct Embeddings {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(vb: VarBuilder, c: &Config) -> Result<Self> {
        Ok(Self {
            words: embedding(c.vocab_size, c.hidden_size, vb.pp("word_embeddings"))?,
            positions: embedding(
                c.max_position_embeddings,
                c.hidden_size,
                vb.pp("position_embeddings"),
            )?,
            token_types: embedding(
                c.type_vocab_size,
                c.hidden_size,
                vb.pp("token_type_embeddings"),
            )?,
            norm: layer_norm(c.hidden_size, c.layer_norm_eps, vb.pp("LayerNorm"))?,
        })
    }

    fn forward(&self, input_ids: &Tensor, token_type_ids: &Tensor) -> Result<Tensor> {
        let (_rows, tokens) = input_ids.dims2()?;
        let positions = Tensor::arange(0u32, tokens as u32, input_ids.device())?;
        let x = (self.words.forward(input_ids)? + self.token_types.forward(token_type_ids)?)?
            .broadcast_add(&self.positions.forward(&positions)?)?;
        self.norm.forward(&x)
    }
}

#[derive(Debug)]
struct Layer {
    /// Query (pre-scaled), key and value, concatenated: `(3 × hidden, hidden)`.
    qkv: Linear,
    heads: usize,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    act: HiddenAct,
    output: Linear,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(vb: VarBuilder, c: &Config) -> Result<Self> {
        let h = c.hidden_size;
        if c.num_attention_heads == 0 || !h.is_multiple_of(c.num_attention_heads) {
            candle_core::bail!(
                "hidden_size {h} is not a multiple of num_attention_heads {}",
                c.num_attention_heads
            );
        }
        let head_size = h / c.num_attention_heads;
        let att = vb.pp("attention.self");
        let q = linear(h, h, att.pp("query"))?;
        let k = linear(h, h, att.pp("key"))?;
        let v = linear(h, h, att.pp("value"))?;
        let scale = 1.0 / (head_size as f64).sqrt();
        let weight = Tensor::cat(
            &[
                (q.weight() * scale)?,
                k.weight().clone(),
                v.weight().clone(),
            ],
            0,
        )?;
        let bias = match (q.bias(), k.bias(), v.bias()) {
            (Some(qb), Some(kb), Some(vb)) => {
                Some(Tensor::cat(&[(qb * scale)?, kb.clone(), vb.clone()], 0)?)
            }
            _ => None,
        };
        Ok(Self {
            qkv: Linear::new(weight, bias),
            heads: c.num_attention_heads,
            attention_out: linear(h, h, vb.pp("attention.output.dense"))?,
            attention_norm: layer_norm(h, c.layer_norm_eps, vb.pp("attention.output.LayerNorm"))?,
            intermediate: linear(h, c.intermediate_size, vb.pp("intermediate.dense"))?,
            act: c.hidden_act,
            output: linear(c.intermediate_size, h, vb.pp("output.dense"))?,
            output_norm: layer_norm(h, c.layer_norm_eps, vb.pp("output.LayerNorm"))?,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (rows, tokens, hidden) = x.dims3()?;
        let head_size = hidden / self.heads;
        // (rows, tokens, 3, heads, head) -> (3, rows, heads, tokens, head), one copy.
        let qkv = self
            .qkv
            .forward(x)?
            .reshape((rows, tokens, 3, self.heads, head_size))?
            .permute((2, 0, 3, 1, 4))?
            .contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let context = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, tokens, hidden))?;
        let attended = self
            .attention_norm
            .forward(&(self.attention_out.forward(&context)? + x)?)?;
        let inner = self.intermediate.forward(&attended)?;
        let inner = match self.act {
            HiddenAct::Gelu => gelu::gelu_erf(&inner)?,
            HiddenAct::GeluApproximate => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        self.output_norm
            .forward(&(self.output.forward(&inner)? + attended)?)
    }
}
