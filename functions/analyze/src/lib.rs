//! `analyze`: a learner's explanation in; scores, gaps, jargon, strengths and one
//! follow-up question out.
//!
//! Request: `{"explanation", "topic", "mode"?: "socratic"|"curious"|"skeptical"|"beginner",
//! "key_concepts"?: [..], "conversation_history"?: [{"role", "text"}], "ask"?: bool}`.
//!
//! Every score is a rule over the text, returned with its evidence under `details`:
//!
//! - **confidence_score:** the mean of a per-sentence certainty: a hedged sentence ("I
//!   think", "maybe", "not sure", … in [`text::HEDGES`]) scores 0.25, less 0.1 for each
//!   further hedge; a question scores 0.2; a plain statement 0.75; each assertive marker
//!   ("because", "therefore", "always", …) adds 0.1; capped to 0..1.
//! - **clarity_score:** `0.25 × length + 0.2 × jargon + 0.35 × coherence + 0.2 × precision`:
//!   - *length* is 1 for 6 to 24 words per sentence and falls off outside;
//!   - *jargon* is `1 − 6 × (undefined jargon / content words)`;
//!   - *coherence* maps the mean cosine (MiniLM) of each sentence to the topic from 0.1…0.45
//!     onto 0…1;
//!   - *precision* is `1 − 8 × (vague words / content words)` ("stuff", "things", …).
//! - **knowledge_gaps:** the key concepts (given, or else the topic and the rare words of
//!   the conversation history) that no sentence covers: not named, and no sentence with a
//!   cosine of [`COVERED`] or more to the concept. The least covered comes first.
//! - **unexplained_jargon:** words rarer than Zipf [`RARE_ZIPF`] (wordfreq's English list;
//!   "algorithm" is 4.0, "chloroplast" 2.3) that the explanation never defines ("X is a", "X
//!   means", "X refers to", "called X", "X, which is", "X (…)"), leaving out the topic's own
//!   words and names written with a capital letter mid-sentence. A word counts as common
//!   if a plain form of it is ("cools" → "cool", "subproblem" → "problem").
//! - **strengths:** covered concepts, defined terms, examples, analogies.
//! - **question:** SmolLM2 writes it from the mode and the weakest gap, with a seeded,
//!   bounded generation that starts from a mode-specific opening naming the gap and stops at
//!   the first `?`. If the model fails, runs past its time budget, or gives no question,
//!   a template asks instead, and `question_source` says `template`.

pub mod text;

use std::time::Duration;

use serde::{Deserialize, Serialize};
use thaw_fn::{FnError, Function};
use thaw_models::{
    ChatModel, EncodeOptions, GenerateOptions, SentenceEncoder, StopReason, WordFrequencies,
};

use crate::text::{
    defines, phrases_in, sentences, words, ANALOGIES, ASSERTIONS, EXAMPLES, HEDGES, VAGUE,
};

/// Below this Zipf frequency (about one use in a million words) a word is rare enough to
/// need a definition.
pub const RARE_ZIPF: f32 = 3.0;
/// A sentence this similar to a concept covers it.
pub const COVERED: f32 = 0.55;
/// Longest explanation, in characters.
pub const MAX_EXPLANATION: usize = 20_000;
/// Longest topic, in characters.
pub const MAX_TOPIC: usize = 200;
/// Most key concepts.
pub const MAX_CONCEPTS: usize = 32;
/// Most history turns.
pub const MAX_HISTORY: usize = 50;

/// How the follow-up question is asked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Leads the learner to reason it out.
    #[default]
    Socratic,
    /// Asks out of interest.
    Curious,
    /// Challenges the claim.
    Skeptical,
    /// Asks as someone new to the topic.
    Beginner,
}

/// One earlier turn.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryTurn {
    /// Who spoke: learner, tutor, user or assistant.
    pub role: String,
    /// What they said.
    pub text: String,
}

/// An analyze request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyzeRequest {
    /// The learner's explanation.
    pub explanation: String,
    /// What it explains.
    pub topic: String,
    /// The question's style.
    #[serde(default)]
    pub mode: Mode,
    /// Concepts a good explanation covers.
    #[serde(default)]
    pub key_concepts: Option<Vec<String>>,
    /// Earlier turns.
    #[serde(default)]
    pub conversation_history: Vec<HistoryTurn>,
    /// Ask a follow-up question (default true).
    #[serde(default)]
    pub ask: Option<bool>,
}

/// Who wrote the question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuestionSource {
    /// SmolLM2.
    Model,
    /// The fallback template.
    Template,
    /// No question was asked (`"ask": false`).
    None,
}

/// The evidence behind the scores.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Details {
    /// Sentences analysed.
    pub sentences: usize,
    /// Hedging phrases found.
    pub hedges: Vec<String>,
    /// Assertive phrases found.
    pub assertions: Vec<String>,
    /// Mean words per sentence.
    pub words_per_sentence: f64,
    /// Clarity's parts, each 0..1.
    pub length_score: f64,
    /// Clarity's parts, each 0..1.
    pub jargon_score: f64,
    /// Mean cosine of the sentences to the topic.
    pub topic_similarity: f64,
    /// Clarity's parts, each 0..1.
    pub coherence_score: f64,
    /// Clarity's parts, each 0..1.
    pub precision_score: f64,
    /// Vague words found.
    pub vague_words: Vec<String>,
    /// The key concepts checked, and whether they were given or derived.
    pub key_concepts: Vec<String>,
    /// `given` or `derived`.
    pub concepts_from: String,
    /// Why the question came from the template, if it did.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub question_fallback: Option<String>,
    /// Time spent generating the question, in ms.
    pub question_ms: u64,
}

/// An analyze reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnalyzeResponse {
    /// 0..1.
    pub confidence_score: f64,
    /// 0..1.
    pub clarity_score: f64,
    /// Key concepts not covered, least covered first.
    pub knowledge_gaps: Vec<String>,
    /// Rare words never defined.
    pub unexplained_jargon: Vec<String>,
    /// What the explanation does well.
    pub strengths: Vec<String>,
    /// The follow-up question (empty when not asked).
    pub question: String,
    /// model, template or none.
    pub question_source: QuestionSource,
    /// The evidence.
    pub details: Details,
}

/// Tunables, from the environment.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The question's time budget (`ANALYZE_QUESTION_BUDGET_MS`, default 4000).
    pub question_budget: Duration,
}

impl Settings {
    /// Defaults, overridden by the environment where set and valid.
    pub fn from_env() -> Self {
        let ms = std::env::var("ANALYZE_QUESTION_BUDGET_MS")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(4000);
        Self {
            question_budget: Duration::from_millis(ms),
        }
    }
}

/// The analyze function.
#[derive(Debug)]
pub struct Analyze {
    encoder: SentenceEncoder,
    words: WordFrequencies,
    chat: ChatModel,
    settings: Settings,
}

fn clamp01(x: f32) -> f32 {
    x.clamp(0.0, 1.0)
}

/// Three decimals, in f64 so the JSON shows `0.15` rather than f32's `0.15000000596`.
fn round3(x: f32) -> f64 {
    (f64::from(x) * 1000.0).round() / 1000.0
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A stable seed from the request, so the same input asks the same question.
fn seed_of(parts: &[&str]) -> u64 {
    // FNV-1a: tiny, stable across runs and platforms (std's hasher is randomised).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

impl Analyze {
    /// Wraps the loaded models.
    pub fn new(
        encoder: SentenceEncoder,
        words: WordFrequencies,
        chat: ChatModel,
        settings: Settings,
    ) -> Self {
        Self {
            encoder,
            words,
            chat,
            settings,
        }
    }

    fn validate(r: &AnalyzeRequest) -> Result<(), FnError> {
        if r.explanation.trim().is_empty() {
            return Err(FnError::invalid_input("\"explanation\" is empty"));
        }
        if r.topic.trim().is_empty() {
            return Err(FnError::invalid_input("\"topic\" is empty"));
        }
        if r.explanation.chars().count() > MAX_EXPLANATION {
            return Err(FnError::payload_too_large(format!(
                "\"explanation\" is over {MAX_EXPLANATION} characters"
            )));
        }
        if r.topic.chars().count() > MAX_TOPIC {
            return Err(FnError::invalid_input(format!(
                "\"topic\" is over {MAX_TOPIC} characters"
            )));
        }
        if let Some(c) = &r.key_concepts {
            if c.len() > MAX_CONCEPTS {
                return Err(FnError::invalid_input(format!(
                    "{} key concepts; the limit is {MAX_CONCEPTS}",
                    c.len()
                )));
            }
            if c.iter()
                .any(|k| k.trim().is_empty() || k.chars().count() > MAX_TOPIC)
            {
                return Err(FnError::invalid_input(format!(
                    "each key concept must be 1 to {MAX_TOPIC} characters"
                )));
            }
        }
        if r.conversation_history.len() > MAX_HISTORY {
            return Err(FnError::invalid_input(format!(
                "{} history turns; the limit is {MAX_HISTORY}",
                r.conversation_history.len()
            )));
        }
        for (i, t) in r.conversation_history.iter().enumerate() {
            if !["learner", "tutor", "user", "assistant"].contains(&t.role.as_str()) {
                return Err(FnError::invalid_input(format!(
                    "conversation_history[{i}].role must be learner, tutor, user or assistant"
                )));
            }
            if t.text.chars().count() > MAX_EXPLANATION {
                return Err(FnError::payload_too_large(format!(
                    "conversation_history[{i}].text is over {MAX_EXPLANATION} characters"
                )));
            }
        }
        Ok(())
    }

    /// The highest Zipf frequency among a word's plain forms.
    fn rarity(&self, w: &str) -> f32 {
        text::lookup_forms(w)
            .iter()
            .map(|f| self.words.zipf(f))
            .fold(0.0, f32::max)
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, FnError> {
        self.encoder
            .encode(texts, EncodeOptions::default())
            .map(|e| e.embeddings)
            .map_err(|e| FnError::model(e.to_string()))
    }

    /// The key concepts: given, or the topic plus the rare words of the history.
    fn concepts(&self, r: &AnalyzeRequest) -> (Vec<String>, &'static str) {
        if let Some(given) = &r.key_concepts {
            return (given.iter().map(|c| c.trim().to_owned()).collect(), "given");
        }
        let mut concepts = vec![r.topic.trim().to_owned()];
        for turn in &r.conversation_history {
            for s in sentences(&turn.text) {
                for w in words(&s) {
                    let rare = w.lower.len() >= 5
                        && !text::is_stopword(&w.lower)
                        && self.words.zipf(&w.lower) < 4.0;
                    if rare && !concepts.iter().any(|c| c.to_lowercase() == w.lower) {
                        concepts.push(w.lower.clone());
                    }
                }
            }
        }
        concepts.truncate(6);
        (concepts, "derived")
    }

    /// Analyses one request.
    pub fn analyze(&mut self, r: &AnalyzeRequest) -> Result<AnalyzeResponse, FnError> {
        Self::validate(r)?;
        let explanation = r.explanation.trim();
        let lower = explanation.to_lowercase();
        let sents = sentences(explanation);
        let n = sents.len().max(1);
        let topic_lower = r.topic.to_lowercase();
        let topic_words: Vec<String> = words(&topic_lower).into_iter().map(|w| w.lower).collect();

        // Confidence: per-sentence certainty.
        let mut certainty = 0.0f32;
        let mut hedges_found = Vec::new();
        let mut assertions_found = Vec::new();
        for s in &sents {
            let sl = s.to_lowercase();
            let hedges: usize = HEDGES.iter().map(|h| text::count_phrase(&sl, h)).sum();
            let strong: usize = ASSERTIONS.iter().map(|a| text::count_phrase(&sl, a)).sum();
            let base = if hedges > 0 {
                0.25 - 0.1 * (hedges - 1) as f32
            } else if s.trim_end().ends_with('?') {
                0.2
            } else {
                0.75
            };
            certainty += clamp01(base + 0.1 * strong as f32);
            hedges_found.extend(phrases_in(&sl, HEDGES).into_iter().map(str::to_owned));
            assertions_found.extend(phrases_in(&sl, ASSERTIONS).into_iter().map(str::to_owned));
        }
        let confidence = clamp01(certainty / n as f32);

        // Words.
        let all_words: Vec<text::Word> = sents.iter().flat_map(|s| words(s)).collect();
        let content: Vec<&text::Word> = all_words
            .iter()
            .filter(|w| !text::is_stopword(&w.lower))
            .collect();
        let content_n = content.len().max(1) as f32;

        // Jargon: rare, not the topic, not a name, never defined.
        let mut jargon: Vec<String> = Vec::new();
        let mut defined: Vec<String> = Vec::new();
        for w in &content {
            let capitalised_name =
                !w.sentence_start && w.text.starts_with(|c: char| c.is_uppercase());
            if w.lower.len() < 5
                || capitalised_name
                || topic_words.contains(&w.lower)
                || jargon.contains(&w.lower)
                || defined.contains(&w.lower)
                || self.rarity(&w.lower) >= RARE_ZIPF
            {
                continue;
            }
            if defines(&lower, &w.lower) {
                defined.push(w.lower.clone());
            } else {
                jargon.push(w.lower.clone());
            }
        }
        let vague: Vec<String> = phrases_in(&lower, VAGUE)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let vague_count: usize = VAGUE.iter().map(|v| text::count_phrase(&lower, v)).sum();

        // Embeddings: the topic, the concepts and the sentences, in one pass.
        let (concepts, concepts_from) = self.concepts(r);
        let mut texts: Vec<&str> = vec![r.topic.trim()];
        texts.extend(concepts.iter().map(String::as_str));
        texts.extend(sents.iter().map(String::as_str));
        let vectors = self.embed(&texts)?;
        let (topic_vec, rest) = vectors
            .split_first()
            .ok_or_else(|| FnError::model("no embeddings"))?;
        let (concept_vecs, sentence_vecs) = rest.split_at(concepts.len());
        let topic_similarity = if sentence_vecs.is_empty() {
            0.0
        } else {
            sentence_vecs.iter().map(|s| dot(s, topic_vec)).sum::<f32>()
                / sentence_vecs.len() as f32
        };

        // Clarity.
        let words_per_sentence = all_words.len() as f32 / n as f32;
        let length_score = if words_per_sentence < 6.0 {
            words_per_sentence / 6.0
        } else if words_per_sentence <= 24.0 {
            1.0
        } else {
            clamp01(1.0 - (words_per_sentence - 24.0) / 24.0)
        };
        let jargon_score = clamp01(1.0 - 6.0 * jargon.len() as f32 / content_n);
        let coherence_score = clamp01((topic_similarity - 0.1) / 0.35);
        let precision_score = clamp01(1.0 - 8.0 * vague_count as f32 / content_n);
        let clarity = clamp01(
            0.25 * length_score
                + 0.2 * jargon_score
                + 0.35 * coherence_score
                + 0.2 * precision_score,
        );

        // Gaps: concepts neither named nor covered by a similar sentence.
        let mut gaps: Vec<(f32, String)> = Vec::new();
        let mut covered: Vec<String> = Vec::new();
        for (concept, cv) in concepts.iter().zip(concept_vecs) {
            let named = {
                let cw: Vec<String> = words(&concept.to_lowercase())
                    .into_iter()
                    .map(|w| w.lower)
                    .filter(|w| !text::is_stopword(w))
                    .collect();
                !cw.is_empty()
                    && cw.iter().all(|w| {
                        // A loose stem: "collection" is named by "collects".
                        let len = w.chars().count();
                        let stem: String = w.chars().take(len.min(5.max(len * 3 / 5))).collect();
                        all_words.iter().any(|x| x.lower.starts_with(&stem))
                    })
            };
            let best = sentence_vecs
                .iter()
                .map(|s| dot(s, cv))
                .fold(f32::MIN, f32::max);
            if named || best >= COVERED {
                covered.push(concept.clone());
            } else {
                gaps.push((best, concept.clone()));
            }
        }
        gaps.sort_by(|a, b| a.0.total_cmp(&b.0));
        let knowledge_gaps: Vec<String> = gaps.into_iter().map(|g| g.1).collect();

        // Strengths.
        let mut strengths: Vec<String> = covered
            .iter()
            .take(5)
            .map(|c| format!("covers {c}"))
            .collect();
        if !defined.is_empty() {
            strengths.push(format!("defines its terms: {}", defined.join(", ")));
        }
        if !phrases_in(&lower, EXAMPLES).is_empty() {
            strengths.push("gives an example".into());
        }
        if !phrases_in(&lower, ANALOGIES).is_empty() {
            strengths.push("uses an analogy".into());
        }
        if coherence_score >= 0.8 {
            strengths.push("stays on topic".into());
        }

        // The question.
        let started = std::time::Instant::now();
        let target = knowledge_gaps
            .first()
            .cloned()
            .or_else(|| jargon.first().cloned());
        let (question, question_source, question_fallback) = if r.ask.unwrap_or(true) {
            self.question(r, target.as_deref())
        } else {
            (String::new(), QuestionSource::None, None)
        };
        hedges_found.dedup();
        assertions_found.dedup();
        Ok(AnalyzeResponse {
            confidence_score: round3(confidence),
            clarity_score: round3(clarity),
            knowledge_gaps,
            unexplained_jargon: jargon,
            strengths,
            question,
            question_source,
            details: Details {
                sentences: sents.len(),
                hedges: hedges_found,
                assertions: assertions_found,
                words_per_sentence: round3(words_per_sentence),
                length_score: round3(length_score),
                jargon_score: round3(jargon_score),
                topic_similarity: round3(topic_similarity),
                coherence_score: round3(coherence_score),
                precision_score: round3(precision_score),
                vague_words: vague,
                key_concepts: concepts,
                concepts_from: concepts_from.into(),
                question_fallback,
                question_ms: started.elapsed().as_millis() as u64,
            },
        })
    }

    /// The follow-up question: the model's, or the template's with the reason.
    fn question(
        &mut self,
        r: &AnalyzeRequest,
        target: Option<&str>,
    ) -> (String, QuestionSource, Option<String>) {
        let topic = r.topic.trim();
        let focus = target.unwrap_or(topic);
        let (style, opening) = match (r.mode, target) {
            (Mode::Socratic, None) => (
                "a Socratic tutor who helps the learner reason it out",
                format!("Why do you think {topic}"),
            ),
            (Mode::Curious, None) => (
                "a curious fellow student",
                format!("I wonder, how does {topic}"),
            ),
            (Mode::Skeptical, None) => (
                "a skeptical reviewer who challenges weak claims",
                format!("What evidence shows that {topic}"),
            ),
            (Mode::Beginner, None) => (
                "a beginner who is new to the topic",
                format!("What is {topic}, and"),
            ),
            (Mode::Socratic, Some(_)) => (
                "a Socratic tutor who helps the learner reason it out",
                format!("Why do you think {focus}"),
            ),
            (Mode::Curious, Some(_)) => (
                "a curious fellow student",
                format!("I wonder, how does {focus}"),
            ),
            (Mode::Skeptical, Some(_)) => (
                "a skeptical reviewer who challenges weak claims",
                format!("How can you be sure about {topic} without {focus}"),
            ),
            (Mode::Beginner, Some(_)) => (
                "a beginner who is new to the topic",
                format!("What is {focus}, and"),
            ),
        };
        let excerpt: String = r.explanation.trim().chars().take(400).collect();
        let missing = match target {
            Some(t) => format!(" They never explained {t}."),
            None => String::new(),
        };
        let system =
            format!("You are {style}. You reply with one short question and nothing else.");
        let user = format!(
            "Topic: {topic}. A learner wrote: \"{excerpt}\".{missing} Write one question about {focus}."
        );
        let fallback = |why: String| {
            (
                template(r.mode, topic, focus),
                QuestionSource::Template,
                Some(why),
            )
        };
        let mut prompt = match self.chat.chat_prompt(&system, &user) {
            Ok(p) => p,
            Err(e) => return fallback(format!("the chat template failed: {e}")),
        };
        prompt.push_str(&format!("Question: {opening}"));
        let opts = GenerateOptions {
            max_new_tokens: 48,
            seed: seed_of(&[topic, r.explanation.as_str(), focus]),
            budget: self.settings.question_budget,
            stop_at: Some('?'),
            ..GenerateOptions::default()
        };
        match self.chat.generate(&prompt, &opts) {
            Ok(g) => {
                let body = g.text.split('?').next().unwrap_or("").trim_end();
                let candidate = format!("{opening}{body}?").replace(['\n', '\r'], " ");
                let ok = g.stop == StopReason::StopChar
                    && candidate.chars().count() <= 240
                    && !candidate.contains("<|");
                if ok {
                    (candidate, QuestionSource::Model, None)
                } else if g.stop == StopReason::Budget {
                    fallback(format!(
                        "generation ran past its {:?} budget",
                        self.settings.question_budget
                    ))
                } else {
                    fallback(format!(
                        "the model gave no question ({} tokens, {:?})",
                        g.new_tokens, g.stop
                    ))
                }
            }
            Err(e) => fallback(format!("generation failed: {e}")),
        }
    }
}

/// The fallback question for a mode.
pub fn template(mode: Mode, topic: &str, focus: &str) -> String {
    if focus == topic {
        return match mode {
            Mode::Socratic => format!("What would change in {topic} if its key step were missing?"),
            Mode::Curious => format!("What surprised you most about {topic}?"),
            Mode::Skeptical => {
                format!("What evidence shows that your account of {topic} is right?")
            }
            Mode::Beginner => format!("Could you explain {topic} as if I had never heard of it?"),
        };
    }
    match mode {
        Mode::Socratic => format!("What role do you think {focus} plays in {topic}?"),
        Mode::Curious => format!("How does {focus} fit into {topic}?"),
        Mode::Skeptical => format!("How can you explain {topic} fully without {focus}?"),
        Mode::Beginner => format!("What is {focus}, and why does it matter for {topic}?"),
    }
}

impl Function for Analyze {
    type Request = AnalyzeRequest;
    type Response = AnalyzeResponse;

    fn handle(&mut self, request: AnalyzeRequest) -> Result<AnalyzeResponse, FnError> {
        self.analyze(&request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_end_with_a_question_mark_and_name_the_focus() {
        for mode in [
            Mode::Socratic,
            Mode::Curious,
            Mode::Skeptical,
            Mode::Beginner,
        ] {
            let q = template(mode, "recursion", "the base case");
            assert!(q.ends_with('?') && q.contains("the base case"), "{q}");
            let q = template(mode, "recursion", "recursion");
            assert!(q.ends_with('?') && q.contains("recursion"), "{q}");
        }
    }

    #[test]
    fn requests_refuse_unknown_modes_and_fields() {
        let ok: AnalyzeRequest =
            serde_json::from_str(r#"{"explanation": "x", "topic": "t", "mode": "curious"}"#)
                .expect("valid");
        assert_eq!(ok.mode, Mode::Curious);
        assert!(serde_json::from_str::<AnalyzeRequest>(
            r#"{"explanation": "x", "topic": "t", "mode": "angry"}"#
        )
        .is_err());
        assert!(serde_json::from_str::<AnalyzeRequest>(
            r#"{"explanation": "x", "topic": "t", "tone": 1}"#
        )
        .is_err());
        assert!(
            serde_json::from_str::<AnalyzeRequest>(r#"{"explanation": 3, "topic": "t"}"#).is_err()
        );
    }

    #[test]
    fn the_seed_is_stable() {
        assert_eq!(seed_of(&["a", "b"]), seed_of(&["a", "b"]));
        assert_ne!(seed_of(&["a", "b"]), seed_of(&["ab", ""]));
    }
}
