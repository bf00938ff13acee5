//! The lexical part of the analysis: sentences, words, hedges, definitions, examples.
//! Everything here is a plain rule over the text, so every score can be traced to the
//! words that moved it.

use std::sync::OnceLock;

use regex::Regex;

/// Phrases that hedge a claim.
pub const HEDGES: &[&str] = &[
    "i think",
    "i guess",
    "i believe",
    "i suppose",
    "i'm not sure",
    "im not sure",
    "not sure",
    "not certain",
    "unsure",
    "maybe",
    "perhaps",
    "probably",
    "possibly",
    "might",
    "may be",
    "could be",
    "sort of",
    "kind of",
    "somehow",
    "or something",
    "i don't know",
    "i dont know",
    "it seems",
    "seems",
    "apparently",
    "if i remember",
    "i'm guessing",
    "im guessing",
    "something like",
    "i assume",
    "not really sure",
    "or maybe",
    "i'm not certain",
    "roughly",
];

/// Phrases that assert or reason firmly.
pub const ASSERTIONS: &[&str] = &[
    "definitely",
    "certainly",
    "clearly",
    "always",
    "never",
    "must",
    "in fact",
    "precisely",
    "exactly",
    "therefore",
    "because",
    "this means",
    "which means",
    "as a result",
    "so that",
    "consequently",
    "is called",
    "for certain",
];

/// Vague filler that says little.
pub const VAGUE: &[&str] = &[
    "stuff",
    "things",
    "thing",
    "whatever",
    "etc",
    "um",
    "uh",
    "like whatever",
    "and so on",
    "blah",
    "whatnot",
    "somehow",
    "something",
    "basically",
];

/// Markers of a worked example.
pub const EXAMPLES: &[&str] = &[
    "for example",
    "for instance",
    "e.g.",
    "such as",
    "imagine",
    "say you",
    "suppose",
    "consider",
];

/// Markers of an analogy.
pub const ANALOGIES: &[&str] = &[
    "like a",
    "like an",
    "similar to",
    "just as",
    "think of it as",
    "as if",
    "analogous",
    "the same way",
    "works like",
    "is like",
];

/// Common function words: never concepts, never jargon.
const STOPWORDS: &[&str] = &[
    "the", "a", "an", "and", "or", "but", "of", "to", "in", "on", "at", "by", "for", "with",
    "from", "is", "are", "was", "were", "be", "been", "it", "its", "this", "that", "these",
    "those", "as", "into", "than", "then", "so", "if", "when", "which", "what", "how", "why",
    "who", "their", "they", "them", "there", "we", "you", "i", "he", "she", "his", "her", "our",
    "your", "not", "no", "do", "does", "did", "can", "will", "would", "should", "could", "has",
    "have", "had", "about", "also", "each", "other", "all", "any", "some", "more", "most", "very",
    "just", "only", "like",
];

/// Whether a lower-case word is a function word.
pub fn is_stopword(w: &str) -> bool {
    STOPWORDS.contains(&w)
}

/// Splits text into sentences at `.`, `!`, `?` followed by a space or the end, and at
/// line breaks. Empty pieces are dropped.
pub fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c == '\n' {
            push_sentence(&mut out, &mut current);
            continue;
        }
        current.push(c);
        let ends =
            matches!(c, '.' | '!' | '?') && chars.get(i + 1).is_none_or(|n| n.is_whitespace());
        // "e.g." and "i.e." do not end a sentence.
        let abbreviation =
            current.to_lowercase().ends_with("e.g.") || current.to_lowercase().ends_with("i.e.");
        if ends && !abbreviation {
            push_sentence(&mut out, &mut current);
        }
    }
    push_sentence(&mut out, &mut current);
    out
}

fn push_sentence(out: &mut Vec<String>, current: &mut String) {
    let s = current.trim();
    if s.chars().any(char::is_alphanumeric) {
        out.push(s.to_owned());
    }
    current.clear();
}

/// A word and where it stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    /// As written.
    pub text: String,
    /// Lower case.
    pub lower: String,
    /// First word of its sentence.
    pub sentence_start: bool,
}

fn word_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"[A-Za-z][A-Za-z'\-]*[A-Za-z]|[A-Za-z]").unwrap_or_else(|_| unreachable!())
    })
}

/// The words of a sentence.
pub fn words(sentence: &str) -> Vec<Word> {
    word_re()
        .find_iter(sentence)
        .enumerate()
        .map(|(i, m)| Word {
            text: m.as_str().to_owned(),
            lower: m.as_str().to_lowercase(),
            sentence_start: i == 0,
        })
        .collect()
}

/// How many times `phrase` occurs in `lower` (already lower-case) as whole words.
pub fn count_phrase(lower: &str, phrase: &str) -> usize {
    let mut n = 0;
    let mut from = 0;
    while let Some(pos) = lower[from..].find(phrase) {
        let start = from + pos;
        let end = start + phrase.len();
        let before_ok = lower[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric());
        let after_ok = lower[end..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_alphanumeric());
        if before_ok && after_ok {
            n += 1;
        }
        from = end;
    }
    n
}

/// The phrases of `list` found in `lower`, each once.
pub fn phrases_in<'a>(lower: &str, list: &[&'a str]) -> Vec<&'a str> {
    list.iter()
        .copied()
        .filter(|p| count_phrase(lower, p) > 0)
        .collect()
}

/// Whether the text defines `term` ("X is", "X means", "X refers to", "called X",
/// "X, which is", "X (…)", "by X I mean").
pub fn defines(text_lower: &str, term: &str) -> bool {
    let t = regex::escape(term);
    let patterns = [
        format!(
            r"\b{t}\b\s+(is|are|was)\s+(a|an|the|what|when|how|where|one|any|called|defined|known|made of|part of)\b"
        ),
        format!(r"\b{t}\b\s+(means|mean|refers to|refer to|stands for|describes|is defined as)\b"),
        format!(r"\b{t}\b,\s+(a|an|the)\s"),
        format!(r"\b{t}\b,?\s+(which|that|i\.e\.|or)\s+(is|are|means|refers)\b"),
        format!(r"\b(called|known as|named|termed|meaning)\s+(an?\s+|the\s+)?{t}\b"),
        format!(r"\b{t}\s*\("),
        format!(r"\bby\s+{t}\s+i\s+mean\b"),
        format!(r"\b{t}\b\s*(:|—|--|-)\s"),
    ];
    patterns
        .iter()
        .filter_map(|p| Regex::new(p).ok())
        .any(|re| re.is_match(text_lower))
}

/// Common prefixes that make a rare-looking word from a common one ("subproblem").
const PREFIXES: &[&str] = &[
    "sub", "re", "un", "over", "under", "non", "pre", "multi", "inter", "super", "self-",
];
/// Inflections to strip before looking a word up ("cools", "collided").
const SUFFIXES: &[&str] = &["ies", "es", "s", "ed", "d", "ing", "ly"];

/// The forms of a word worth looking up: itself, without an inflection, and the common
/// word left after a common prefix.
pub fn lookup_forms(w: &str) -> Vec<String> {
    let mut forms = vec![w.to_owned()];
    for suffix in SUFFIXES {
        if let Some(stem) = w.strip_suffix(suffix) {
            if stem.len() >= 3 {
                forms.push(stem.to_owned());
                if *suffix == "ies" {
                    forms.push(format!("{stem}y"));
                }
            }
        }
    }
    for prefix in PREFIXES {
        if let Some(rest) = w.strip_prefix(prefix) {
            if rest.len() >= 4 {
                forms.push(rest.to_owned());
            }
        }
    }
    forms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_on_ends_but_not_on_abbreviations() {
        let s = sentences("Plants use light, e.g. sunlight. They make sugar!\nIs that all? Yes");
        assert_eq!(
            s,
            [
                "Plants use light, e.g. sunlight.",
                "They make sugar!",
                "Is that all?",
                "Yes"
            ]
        );
        assert!(sentences("  ...  ").is_empty());
    }

    #[test]
    fn phrases_match_whole_words_only() {
        assert_eq!(count_phrase("i think it might be", "might"), 1);
        assert_eq!(count_phrase("mighty", "might"), 0);
        assert_eq!(count_phrase("maybe, maybe not", "maybe"), 2);
    }

    #[test]
    fn definitions_are_recognised() {
        assert!(defines(
            "a stack frame is the memory a call uses.",
            "stack frame"
        ));
        assert!(defines("this is called memoisation.", "memoisation"));
        assert!(defines(
            "chlorophyll (the green pigment) absorbs light",
            "chlorophyll"
        ));
        assert!(defines("the stroma, which is the fluid inside", "stroma"));
        assert!(!defines(
            "the thylakoid makes atp in the stroma.",
            "thylakoid"
        ));
        assert!(!defines(
            "an adjuvant is added so the response is stronger.",
            "adjuvant"
        ));
        assert!(defines(
            "it turns them into glucose, a sugar that stores energy.",
            "glucose"
        ));
    }
}
