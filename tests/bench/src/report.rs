//! The rows every figure adds, printed as one table at the end (and as JSON on request).

use std::time::Duration;

use serde_json::{Value, json};

/// Whether a row meets its goal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The goal is met.
    Pass,
    /// The goal is missed (reported, never a harness failure).
    Miss,
    /// A number shown for context, with no goal of its own.
    Info,
}

impl Verdict {
    /// `Pass` when `ok`, else `Miss`.
    pub(crate) fn of(ok: bool) -> Self {
        if ok { Self::Pass } else { Self::Miss }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Miss => "MISS",
            Self::Info => "-",
        }
    }
}

/// One measured number.
#[derive(Debug, Clone)]
pub(crate) struct Row {
    /// `1 quiesce`, `2 herd`, ...
    pub(crate) figure: String,
    /// What was measured (and how: plain, tls, tls+auth).
    pub(crate) metric: String,
    /// The size it was measured at.
    pub(crate) size: String,
    /// The value.
    pub(crate) value: String,
    /// The reference measured in the same run.
    pub(crate) reference: String,
    /// value / reference (or whatever the goal compares).
    pub(crate) ratio: Option<f64>,
    /// The goal.
    pub(crate) goal: String,
    /// Met or not.
    pub(crate) verdict: Verdict,
    /// Why, when it did not finish or needs a word.
    pub(crate) note: String,
}

impl Row {
    /// A row with no reference, ratio, goal or note yet.
    pub(crate) fn new(figure: &str, metric: impl Into<String>, size: impl Into<String>) -> Self {
        Self {
            figure: figure.to_owned(),
            metric: metric.into(),
            size: size.into(),
            value: String::new(),
            reference: "-".into(),
            ratio: None,
            goal: "-".into(),
            verdict: Verdict::Info,
            note: String::new(),
        }
    }

    /// Sets the value.
    pub(crate) fn value(mut self, v: impl Into<String>) -> Self {
        self.value = v.into();
        self
    }

    /// Sets the reference.
    pub(crate) fn reference(mut self, r: impl Into<String>) -> Self {
        self.reference = r.into();
        self
    }

    /// Sets the ratio.
    pub(crate) fn ratio(mut self, r: f64) -> Self {
        self.ratio = r.is_finite().then_some(r);
        self
    }

    /// Sets the goal and the verdict.
    pub(crate) fn goal(mut self, goal: impl Into<String>, ok: bool) -> Self {
        self.goal = goal.into();
        self.verdict = Verdict::of(ok);
        self
    }

    /// Adds a note.
    pub(crate) fn note(mut self, n: impl Into<String>) -> Self {
        self.note = n.into();
        self
    }
}

/// Every row so far, in order.
#[derive(Debug, Default)]
pub(crate) struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// Adds a row and prints it at once (a long run shows progress).
    pub(crate) fn push(&mut self, row: Row) {
        println!(
            "  [{}] {} | {} | {} | ref {} | ratio {} | goal {} | {}{}",
            row.figure,
            row.metric,
            row.size,
            row.value,
            row.reference,
            ratio_text(row.ratio),
            row.goal,
            row.verdict.word(),
            if row.note.is_empty() {
                String::new()
            } else {
                format!(" ({})", row.note)
            }
        );
        self.rows.push(row);
    }

    /// The whole table.
    pub(crate) fn print(&self) {
        let header = [
            "figure",
            "metric",
            "size",
            "value",
            "reference (same run)",
            "ratio",
            "goal",
            "result",
        ];
        let cells: Vec<[String; 8]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.figure.clone(),
                    r.metric.clone(),
                    r.size.clone(),
                    r.value.clone(),
                    r.reference.clone(),
                    ratio_text(r.ratio),
                    r.goal.clone(),
                    r.verdict.word().to_owned(),
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: &[String]| {
            let mut s = String::from("|");
            for (c, w) in cols.iter().zip(widths) {
                let pad = w - c.chars().count();
                s.push(' ');
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
                s.push_str(" |");
            }
            s
        };
        println!();
        println!("{}", line(&header.map(str::to_owned)));
        println!(
            "|{}",
            widths
                .iter()
                .map(|w| format!("{}|", "-".repeat(w + 2)))
                .collect::<String>()
        );
        for row in &cells {
            println!("{}", line(row));
        }
        let notes: Vec<&Row> = self.rows.iter().filter(|r| !r.note.is_empty()).collect();
        if !notes.is_empty() {
            println!();
            for r in notes {
                println!("note [{}] {} ({}): {}", r.figure, r.metric, r.size, r.note);
            }
        }
        let missed = self
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Miss)
            .count();
        let passed = self
            .rows
            .iter()
            .filter(|r| r.verdict == Verdict::Pass)
            .count();
        println!();
        println!("goals: {passed} met, {missed} missed");
    }

    /// Every row as JSON.
    pub(crate) fn json(&self, wall: Duration, smoke: bool) -> Value {
        json!({
            "mode": if smoke { "smoke" } else { "full" },
            "wall_seconds": wall.as_secs_f64(),
            "rows": self.rows.iter().map(|r| json!({
                "figure": r.figure,
                "metric": r.metric,
                "size": r.size,
                "value": r.value,
                "reference": r.reference,
                "ratio": r.ratio,
                "goal": r.goal,
                "result": r.verdict.word(),
                "note": r.note,
            })).collect::<Vec<_>>(),
        })
    }
}

fn ratio_text(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r >= 100.0 => format!("{r:.0}x"),
        Some(r) if r >= 10.0 => format!("{r:.1}x"),
        Some(r) => format!("{r:.2}x"),
    }
}
