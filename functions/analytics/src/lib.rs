//! `analytics`: a learning session's analyze results in, its trends out. Pure CPU and
//! small, made to run wide under `thaw map` over many sessions.
//!
//! Request: `{"session_id"?, "turns": [{"analysis": <analyze reply>, "timestamp"?}]}`, in
//! the order the turns happened.
//!
//! Reply, and how each part is computed:
//! - `learning_curve`: per turn, `understanding = (clarity + confidence) / 2`.
//! - `clarity_trend`: the least-squares slope of clarity against the turn number.
//!   Above [`TREND_THRESHOLD`] (+0.02 clarity per turn, i.e. +0.2 over ten turns) it is
//!   `improving`, below −0.02 `declining`, otherwise `stable`. The slope is returned as
//!   `clarity_slope`. Fewer than two turns have no slope: `stable`, slope `null`.
//! - `confidence_over_time`: confidence per turn.
//! - `persistent_gaps`: knowledge gaps (compared case- and space-insensitively) that
//!   appear in at least [`PERSISTENT_MIN_TURNS`] turns, or in at least
//!   [`PERSISTENT_SHARE`] of the turns. One turn cannot show persistence: none.
//! - `suggested_review_topics`: the persistent gaps, most frequent first (then most
//!   recent), followed by the last turn's other gaps; at most [`MAX_REVIEW_TOPICS`].
//! - `total_turns`, `average_confidence`, `average_clarity` (`null` with no turns).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thaw_fn::{FnError, Function};

/// Clarity slope per turn beyond which the trend is not `stable`.
pub const TREND_THRESHOLD: f64 = 0.02;
/// A gap seen in this many turns is persistent.
pub const PERSISTENT_MIN_TURNS: usize = 2;
/// A gap seen in this share of the turns is persistent.
pub const PERSISTENT_SHARE: f64 = 0.4;
/// Most review topics suggested.
pub const MAX_REVIEW_TOPICS: usize = 5;
/// Most turns in one session.
pub const MAX_TURNS: usize = 10_000;

/// The parts of an analyze reply analytics reads; other fields are allowed and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Analysis {
    /// 0 to 1.
    pub confidence_score: f64,
    /// 0 to 1.
    pub clarity_score: f64,
    /// Concepts the explanation did not cover.
    #[serde(default)]
    pub knowledge_gaps: Vec<String>,
}

/// One turn of a session.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Turn {
    /// The analyze reply for this turn.
    pub analysis: Analysis,
    /// When it happened (echoed, any JSON).
    #[serde(default)]
    pub timestamp: Option<Value>,
}

/// An analytics request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnalyticsRequest {
    /// Echoed in the reply.
    #[serde(default)]
    pub session_id: Option<String>,
    /// The turns, in order.
    pub turns: Vec<Turn>,
}

/// A point of the learning curve.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CurvePoint {
    /// 1-based turn number.
    pub turn: usize,
    /// `(clarity + confidence) / 2`.
    pub understanding: f64,
    /// The turn's timestamp, if given.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub timestamp: Option<Value>,
}

/// The direction of clarity over the session.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Trend {
    /// Slope above +[`TREND_THRESHOLD`].
    Improving,
    /// Within ±[`TREND_THRESHOLD`], or fewer than two turns.
    Stable,
    /// Slope below −[`TREND_THRESHOLD`].
    Declining,
}

/// An analytics reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AnalyticsResponse {
    /// Echoed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub session_id: Option<String>,
    /// Understanding per turn.
    pub learning_curve: Vec<CurvePoint>,
    /// improving, stable or declining.
    pub clarity_trend: Trend,
    /// The least-squares clarity slope per turn; `null` under two turns.
    pub clarity_slope: Option<f64>,
    /// Confidence per turn.
    pub confidence_over_time: Vec<f64>,
    /// Gaps that keep coming back.
    pub persistent_gaps: Vec<String>,
    /// What to review next.
    pub suggested_review_topics: Vec<String>,
    /// Turns analysed.
    pub total_turns: usize,
    /// Mean confidence; `null` with no turns.
    pub average_confidence: Option<f64>,
    /// Mean clarity; `null` with no turns.
    pub average_clarity: Option<f64>,
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

/// The least-squares slope of `ys` against 1, 2, 3, …; `None` under two points.
pub fn slope(ys: &[f64]) -> Option<f64> {
    let n = ys.len();
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let mean_x = (nf + 1.0) / 2.0;
    let mean_y = ys.iter().sum::<f64>() / nf;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let dx = (i + 1) as f64 - mean_x;
        sxy += dx * (y - mean_y);
        sxx += dx * dx;
    }
    Some(sxy / sxx)
}

/// The trend a slope means.
pub fn trend(slope: Option<f64>) -> Trend {
    match slope {
        Some(s) if s > TREND_THRESHOLD => Trend::Improving,
        Some(s) if s < -TREND_THRESHOLD => Trend::Declining,
        _ => Trend::Stable,
    }
}

fn gap_key(g: &str) -> String {
    g.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Persistent gaps and review topics, as the module docs define them.
pub fn gaps(turns: &[Vec<String>]) -> (Vec<String>, Vec<String>) {
    let n = turns.len();
    // key -> (turns it appears in, last turn index, first spelling seen)
    let mut seen: HashMap<String, (usize, usize, String)> = HashMap::new();
    for (t, gaps) in turns.iter().enumerate() {
        let mut this_turn: Vec<String> = Vec::new();
        for g in gaps {
            let key = gap_key(g);
            if key.is_empty() || this_turn.contains(&key) {
                continue;
            }
            this_turn.push(key.clone());
            let entry = seen.entry(key).or_insert((0, t, g.trim().to_owned()));
            entry.0 += 1;
            entry.1 = t;
        }
    }
    let mut persistent: Vec<(usize, usize, String)> = if n < 2 {
        Vec::new()
    } else {
        seen.values()
            .filter(|(count, _, _)| {
                *count >= PERSISTENT_MIN_TURNS || *count as f64 >= PERSISTENT_SHARE * n as f64
            })
            .cloned()
            .collect()
    };
    persistent.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    let persistent: Vec<String> = persistent.into_iter().map(|p| p.2).collect();
    let mut review = persistent.clone();
    if let Some(last) = turns.last() {
        for g in last {
            let key = gap_key(g);
            if !key.is_empty() && !review.iter().any(|r| gap_key(r) == key) {
                review.push(g.trim().to_owned());
            }
        }
    }
    review.truncate(MAX_REVIEW_TOPICS);
    (persistent, review)
}

/// The analytics function.
#[derive(Debug, Default)]
pub struct Analytics;

impl Analytics {
    /// Analyses one session.
    pub fn analyse(&self, r: AnalyticsRequest) -> Result<AnalyticsResponse, FnError> {
        if r.turns.len() > MAX_TURNS {
            return Err(FnError::invalid_input(format!(
                "{} turns; the limit is {MAX_TURNS}",
                r.turns.len()
            )));
        }
        for (i, t) in r.turns.iter().enumerate() {
            for (name, v) in [
                ("confidence_score", t.analysis.confidence_score),
                ("clarity_score", t.analysis.clarity_score),
            ] {
                if !(0.0..=1.0).contains(&v) {
                    return Err(FnError::invalid_input(format!(
                        "turns[{i}].analysis.{name} is {v}; it must be between 0 and 1"
                    )));
                }
            }
        }
        let clarity: Vec<f64> = r.turns.iter().map(|t| t.analysis.clarity_score).collect();
        let confidence: Vec<f64> = r
            .turns
            .iter()
            .map(|t| t.analysis.confidence_score)
            .collect();
        let n = r.turns.len();
        let mean = |v: &[f64]| (n > 0).then(|| round4(v.iter().sum::<f64>() / n as f64));
        let clarity_slope = slope(&clarity);
        let gap_lists: Vec<Vec<String>> = r
            .turns
            .iter()
            .map(|t| t.analysis.knowledge_gaps.clone())
            .collect();
        let (persistent_gaps, suggested_review_topics) = gaps(&gap_lists);
        Ok(AnalyticsResponse {
            learning_curve: r
                .turns
                .iter()
                .enumerate()
                .map(|(i, t)| CurvePoint {
                    turn: i + 1,
                    understanding: round4(
                        (t.analysis.clarity_score + t.analysis.confidence_score) / 2.0,
                    ),
                    timestamp: t.timestamp.clone(),
                })
                .collect(),
            clarity_trend: trend(clarity_slope),
            clarity_slope: clarity_slope.map(round4),
            confidence_over_time: confidence.iter().copied().map(round4).collect(),
            persistent_gaps,
            suggested_review_topics,
            total_turns: n,
            average_confidence: mean(&confidence),
            average_clarity: mean(&clarity),
            session_id: r.session_id,
        })
    }
}

impl Function for Analytics {
    type Request = AnalyticsRequest;
    type Response = AnalyticsResponse;

    fn handle(&mut self, request: AnalyticsRequest) -> Result<AnalyticsResponse, FnError> {
        self.analyse(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn session(points: &[(f64, f64, &[&str])]) -> AnalyticsRequest {
        let turns: Vec<Value> = points
            .iter()
            .map(|(clarity, confidence, gaps)| {
                json!({"analysis": {"clarity_score": clarity, "confidence_score": confidence,
                        "knowledge_gaps": gaps, "question": "ignored?", "strengths": []}})
            })
            .collect();
        serde_json::from_value(json!({"session_id": "s", "turns": turns})).expect("valid")
    }

    #[test]
    fn the_trend_follows_the_slope_and_its_threshold() {
        let s = slope(&[0.2, 0.4, 0.6]).expect("slope");
        assert!((s - 0.2).abs() < 1e-12, "{s}");
        assert_eq!(trend(Some(0.021)), Trend::Improving);
        assert_eq!(trend(Some(0.02)), Trend::Stable);
        assert_eq!(trend(Some(-0.02)), Trend::Stable);
        assert_eq!(trend(Some(-0.021)), Trend::Declining);
        assert_eq!(trend(None), Trend::Stable);
        let r = Analytics.analyse(session(&[
            (0.8, 0.5, &[]),
            (0.6, 0.5, &[]),
            (0.3, 0.5, &[]),
        ]));
        let r = r.expect("ok");
        assert_eq!(r.clarity_trend, Trend::Declining);
        assert_eq!(r.clarity_slope, Some(-0.25));
        // Noise around a flat line is stable.
        let r = Analytics
            .analyse(session(&[
                (0.5, 0.5, &[]),
                (0.52, 0.5, &[]),
                (0.49, 0.5, &[]),
                (0.51, 0.5, &[]),
            ]))
            .expect("ok");
        assert_eq!(r.clarity_trend, Trend::Stable);
    }

    #[test]
    fn persistent_gaps_need_two_turns_or_forty_percent() {
        let r = Analytics
            .analyse(session(&[
                (0.5, 0.5, &["Recursion", "base case"]),
                (0.5, 0.5, &["recursion "]),
                (0.5, 0.5, &["stack"]),
                (0.5, 0.5, &["Base  Case"]),
                (0.5, 0.5, &["heap"]),
            ]))
            .expect("ok");
        // recursion and base case: 2 of 5 turns each; stack and heap: 1 of 5 (20%).
        assert_eq!(r.persistent_gaps, ["base case", "Recursion"]);
        assert_eq!(
            r.suggested_review_topics,
            ["base case", "Recursion", "heap"]
        );
        // With two turns, one appearance is 50% of them.
        let r = Analytics
            .analyse(session(&[(0.5, 0.5, &["a"]), (0.5, 0.5, &["b"])]))
            .expect("ok");
        assert_eq!(r.persistent_gaps, ["b", "a"]);
    }

    #[test]
    fn zero_and_one_turn_are_explicit() {
        let r = Analytics.analyse(session(&[])).expect("ok");
        assert_eq!(r.total_turns, 0);
        assert_eq!(r.average_clarity, None);
        assert_eq!(r.average_confidence, None);
        assert_eq!(r.clarity_trend, Trend::Stable);
        assert_eq!(r.clarity_slope, None);
        assert!(r.learning_curve.is_empty() && r.persistent_gaps.is_empty());
        assert!(r.suggested_review_topics.is_empty());

        let r = Analytics
            .analyse(session(&[(0.7, 0.9, &["closures"])]))
            .expect("ok");
        assert_eq!(r.total_turns, 1);
        assert_eq!(r.average_clarity, Some(0.7));
        assert_eq!(r.clarity_slope, None);
        assert_eq!(r.clarity_trend, Trend::Stable);
        assert!(
            r.persistent_gaps.is_empty(),
            "one turn shows no persistence"
        );
        assert_eq!(r.suggested_review_topics, ["closures"]);
        assert_eq!(r.learning_curve[0].understanding, 0.8);
    }

    #[test]
    fn scores_outside_zero_to_one_are_refused() {
        let err = Analytics
            .analyse(session(&[(1.5, 0.5, &[])]))
            .expect_err("refused");
        assert!(err.to_string().contains("clarity_score"), "{err}");
        assert!(
            serde_json::from_value::<AnalyticsRequest>(json!({"turns": [{"analysis": {}}]}))
                .is_err()
        );
        assert!(
            serde_json::from_value::<AnalyticsRequest>(json!({"turns": [], "extra": 1})).is_err()
        );
    }
}
