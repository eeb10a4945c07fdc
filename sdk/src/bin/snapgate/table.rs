//! Plain aligned columns, as kubectl prints them: a header row in capitals, two spaces
//! between columns, `<none>` for empty cells.

/// Rows of text under a header.
pub(crate) struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column names.
    pub(crate) fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (as many cells as columns).
    pub(crate) fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// The table as text, one line per row, each ending in a newline.
    pub(crate) fn render(&self) -> String {
        let cell = |c: &str| {
            if c.is_empty() {
                "<none>".to_owned()
            } else {
                c.replace('\n', " ")
            }
        };
        let rows: Vec<Vec<String>> = self
            .rows
            .iter()
            .map(|r| r.iter().map(|c| cell(c)).collect())
            .collect();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: Vec<&str>| {
            let last = cells.len().saturating_sub(1);
            let mut out = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                out.push_str(c);
                if i < last {
                    out.push_str(&" ".repeat(w - c.chars().count() + 2));
                }
            }
            out.push('\n');
            out
        };
        let mut out = line(self.header.clone());
        for r in &rows {
            out.push_str(&line(r.iter().map(String::as_str).collect()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_empty_cells_say_none() {
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec!["db".into(), "Completed".into()]);
        t.row(vec!["logs-archive".into(), String::new()]);
        assert_eq!(
            t.render(),
            "NAME          STATE\ndb            Completed\nlogs-archive  <none>\n"
        );
    }
}
