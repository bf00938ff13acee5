//! Chat templates: the Jinja template a model ships (GGUF `tokenizer.chat_template`, the
//! same text as tokenizer_config.json's `chat_template`), rendered with minijinja.
//!
//! Templates are written for Python's Jinja2 and call Python string methods
//! (`.strip()`, `.startswith()`); minijinja-contrib's pycompat supplies them. The context
//! is what transformers' `apply_chat_template` passes: `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, and a `raise_exception` function that templates use to
//! refuse a conversation (say, two system messages), which becomes the caller's error.

use minijinja::{Environment, Error, ErrorKind};
use serde::Serialize;

use crate::ModelError;

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_owned(),
            content: content.into(),
        }
    }
}

/// Template instructions one rendering may run: far above what a long conversation takes
/// with any published template, far below a loop that would hold the inference thread.
const FUEL: u64 = 50_000_000;

/// A compiled chat template with the model's special tokens.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles `source`; a template that does not parse is the snapshot's error.
    pub(crate) fn new(source: String, bos: String, eos: String) -> Result<Self, String> {
        let mut env = Environment::new();
        // A template is data from a snapshot: bound how much work one rendering may do.
        env.set_fuel(Some(FUEL));
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source)
            .map_err(|e| e.to_string())?;
        Ok(Self { env, bos, eos })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened when
    /// `add_generation_prompt`.
    pub(crate) fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        let template = self
            .env
            .get_template("chat")
            .map_err(|e| ModelError::TemplateFailed(e.to_string()))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos,
                eos_token => &self.eos,
            })
            .map_err(|e| match e.kind() {
                // `raise_exception`: the template refuses this conversation.
                ErrorKind::InvalidOperation => {
                    ModelError::Template(e.detail().unwrap_or_default().to_owned())
                }
                // Anything else is the template's own fault.
                _ => ModelError::TemplateFailed(e.to_string()),
            })
    }
}
