//! The emails' layout: a small document (titles, paragraphs, facts, tables, warnings) rendered
//! once as plain text with aligned columns and once as email-client-safe HTML (inline styles,
//! layout tables, no external resources, no scripts), so both parts always say the same thing.
//! Every string is made one line and, in HTML, escaped here: the renderers never write markup.

use std::fmt::Write as _;

/// A run of text inside a paragraph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Span {
    Text(String),
    /// A command or a config key: `backticks` in text, `<code>` in HTML.
    Code(String),
    Strong(String),
}

pub(super) fn text(value: impl Into<String>) -> Span {
    Span::Text(value.into())
}

pub(super) fn code(value: impl Into<String>) -> Span {
    Span::Code(value.into())
}

pub(super) fn strong(value: impl Into<String>) -> Span {
    Span::Strong(value.into())
}

/// A table: a header, rows, an optional totals row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// How many leading columns are names (left-aligned); the rest are figures (right-aligned).
    pub keys: usize,
    pub total: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Block {
    Title(String),
    Heading(String),
    Para(Vec<Span>),
    Warning(Vec<Span>),
    /// `label: value` lines.
    Facts(Vec<(String, String)>),
    Table(Table),
    /// Where the email came from, after a signature separator.
    Footer(Vec<Span>),
}

/// An email's content, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Doc {
    blocks: Vec<Block>,
}

impl Doc {
    pub fn title(&mut self, value: impl Into<String>) {
        self.blocks.push(Block::Title(value.into()));
    }

    pub fn heading(&mut self, value: impl Into<String>) {
        self.blocks.push(Block::Heading(value.into()));
    }

    pub fn para(&mut self, spans: Vec<Span>) {
        self.blocks.push(Block::Para(spans));
    }

    pub fn warning(&mut self, spans: Vec<Span>) {
        self.blocks.push(Block::Warning(spans));
    }

    pub fn facts(&mut self, facts: Vec<(String, String)>) {
        self.blocks.push(Block::Facts(facts));
    }

    pub fn table(&mut self, table: Table) {
        self.blocks.push(Block::Table(table));
    }

    pub fn footer(&mut self, spans: Vec<Span>) {
        self.blocks.push(Block::Footer(spans));
    }

    /// The plain-text part: blocks separated by blank lines, a heading right above its block.
    /// Lines are not wrapped: tables must keep their columns (the transport encodes long lines).
    pub fn text(&self) -> String {
        let mut out = String::new();
        for (i, block) in self.blocks.iter().enumerate() {
            let heading = matches!(block, Block::Heading(_));
            match block {
                Block::Title(value) => underline(&mut out, value, '='),
                Block::Heading(value) => underline(&mut out, value, '-'),
                Block::Para(spans) => {
                    let _ = writeln!(out, "{}", spans_text(spans));
                }
                Block::Warning(spans) => {
                    let _ = writeln!(out, "Warning: {}", spans_text(spans));
                }
                Block::Facts(facts) => {
                    let width = facts
                        .iter()
                        .map(|(label, _)| one_line(label).chars().count() + 1)
                        .max()
                        .unwrap_or(0);
                    for (label, value) in facts {
                        let label = format!("{}:", one_line(label));
                        let _ = writeln!(out, "{label:<width$}  {}", one_line(value));
                    }
                }
                Block::Table(table) => out.push_str(&aligned_table(table)),
                Block::Footer(spans) => {
                    let _ = writeln!(out, "-- \n{}", spans_text(spans));
                }
            }
            if !heading && i + 1 < self.blocks.len() {
                out.push('\n');
            }
        }
        out
    }

    /// The HTML part: one centred 640px card, inline styles only.
    pub fn html(&self, title: &str) -> String {
        let mut body = String::new();
        for block in &self.blocks {
            match block {
                Block::Title(value) => {
                    let _ = writeln!(
                        body,
                        "<h1 style=\"{FONT}margin:0 0 16px 0;font-size:20px;line-height:26px;font-weight:bold;color:#18181b;\">{}</h1>",
                        escape_html(&one_line(value))
                    );
                }
                Block::Heading(value) => {
                    let _ = writeln!(
                        body,
                        "<h2 style=\"{FONT}margin:24px 0 8px 0;font-size:16px;line-height:22px;font-weight:bold;color:#18181b;\">{}</h2>",
                        escape_html(&one_line(value))
                    );
                }
                Block::Para(spans) => {
                    let _ = writeln!(
                        body,
                        "<p style=\"{FONT}margin:0 0 12px 0;font-size:14px;line-height:20px;color:#18181b;\">{}</p>",
                        spans_html(spans)
                    );
                }
                Block::Warning(spans) => {
                    let _ = writeln!(
                        body,
                        "<table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\" style=\"border-collapse:collapse;margin:0 0 12px 0;\"><tr><td style=\"{FONT}padding:8px 12px;background-color:#fef3c7;border-left:4px solid #d97706;font-size:14px;line-height:20px;color:#78350f;\"><strong>Warning:</strong> {}</td></tr></table>",
                        spans_html(spans)
                    );
                }
                Block::Facts(facts) => {
                    body.push_str("<table role=\"presentation\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\" style=\"border-collapse:collapse;margin:0 0 12px 0;\">\n");
                    for (label, value) in facts {
                        let _ = writeln!(
                            body,
                            "<tr><td style=\"{FONT}padding:2px 16px 2px 0;font-size:14px;line-height:20px;color:#52525b;white-space:nowrap;vertical-align:top;\">{}</td><td style=\"{FONT}padding:2px 0;font-size:14px;line-height:20px;color:#18181b;vertical-align:top;\">{}</td></tr>",
                            escape_html(&one_line(label)),
                            escape_html(&one_line(value))
                        );
                    }
                    body.push_str("</table>\n");
                }
                Block::Table(table) => body.push_str(&html_table(table)),
                Block::Footer(spans) => {
                    let _ = writeln!(
                        body,
                        "<p style=\"{FONT}margin:24px 0 0 0;padding-top:12px;border-top:1px solid #e4e4e7;font-size:12px;line-height:18px;color:#71717a;\">{}</p>",
                        spans_html(spans)
                    );
                }
            }
        }
        format!(
            "<!DOCTYPE html>\n\
             <html lang=\"en\">\n\
             <head>\n\
             <meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <title>{}</title>\n\
             </head>\n\
             <body style=\"margin:0;padding:0;background-color:#f4f4f5;\">\n\
             <table role=\"presentation\" width=\"100%\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\" style=\"background-color:#f4f4f5;\">\n\
             <tr><td align=\"center\" style=\"padding:24px 12px;\">\n\
             <table role=\"presentation\" width=\"640\" cellpadding=\"0\" cellspacing=\"0\" border=\"0\" style=\"width:100%;max-width:640px;background-color:#ffffff;border:1px solid #e4e4e7;\">\n\
             <tr><td style=\"{FONT}padding:24px;font-size:14px;line-height:20px;color:#18181b;\">\n\
             {body}\
             </td></tr>\n\
             </table>\n\
             </td></tr>\n\
             </table>\n\
             </body>\n\
             </html>\n",
            escape_html(&one_line(title))
        )
    }
}

const FONT: &str = "font-family:Helvetica,Arial,sans-serif;";

/// Text safe to put between HTML tags or inside a quoted attribute.
pub(super) fn escape_html(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// One line: control characters (a newline in an agent's name, say) become spaces, so a value
/// can neither break a table nor start a header in a subject.
pub(super) fn one_line(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn underline(out: &mut String, value: &str, rule: char) {
    let value = one_line(value);
    let _ = writeln!(out, "{value}");
    let width = value.chars().count();
    let _ = writeln!(out, "{}", rule.to_string().repeat(width));
}

fn spans_text(spans: &[Span]) -> String {
    let mut out = String::new();
    for span in spans {
        match span {
            Span::Text(value) | Span::Strong(value) => out.push_str(&one_line(value)),
            Span::Code(value) => {
                let _ = write!(out, "`{}`", one_line(value));
            }
        }
    }
    out
}

fn spans_html(spans: &[Span]) -> String {
    let mut out = String::new();
    for span in spans {
        match span {
            Span::Text(value) => out.push_str(&escape_html(&one_line(value))),
            Span::Strong(value) => {
                let _ = write!(out, "<strong>{}</strong>", escape_html(&one_line(value)));
            }
            Span::Code(value) => {
                let _ = write!(
                    out,
                    "<code style=\"font-family:Menlo,Consolas,monospace;font-size:13px;background-color:#f4f4f5;padding:1px 4px;\">{}</code>",
                    escape_html(&one_line(value))
                );
            }
        }
    }
    out
}

/// Name columns left-aligned, figures right-aligned, two spaces between columns.
fn aligned_table(table: &Table) -> String {
    let clean = |row: &[String]| row.iter().map(|c| one_line(c)).collect::<Vec<_>>();
    let mut rows = vec![clean(&table.header)];
    rows.extend(table.rows.iter().map(|row| clean(row)));
    rows.extend(table.total.iter().map(|row| clean(row)));
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; columns];
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i > 0 {
                line.push_str("  ");
            }
            if i < table.keys {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            } else {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

fn html_table(table: &Table) -> String {
    let align = |i: usize| if i < table.keys { "left" } else { "right" };
    // One cell a line: rows stay far below SMTP's 998-character line limit.
    let mut out = String::from(
        "<table cellpadding=\"0\" cellspacing=\"0\" border=\"0\" width=\"100%\" style=\"border-collapse:collapse;width:100%;margin:0 0 12px 0;\">\n<tr>\n",
    );
    for (i, cell) in table.header.iter().enumerate() {
        let _ = writeln!(
            out,
            "<th align=\"{0}\" style=\"{FONT}text-align:{0};padding:4px 8px;border-bottom:2px solid #d4d4d8;font-size:12px;line-height:16px;font-weight:bold;color:#52525b;white-space:nowrap;\">{1}</th>",
            align(i),
            escape_html(&one_line(cell))
        );
    }
    out.push_str("</tr>\n");
    let row = |out: &mut String, cells: &[String], total: bool| {
        out.push_str("<tr>\n");
        let (weight, border) = if total {
            ("bold", "border-top:2px solid #d4d4d8;")
        } else {
            ("normal", "border-bottom:1px solid #f4f4f5;")
        };
        for (i, cell) in cells.iter().enumerate() {
            let _ = writeln!(
                out,
                "<td align=\"{0}\" style=\"{FONT}text-align:{0};padding:4px 8px;{border}font-size:13px;line-height:18px;font-weight:{weight};color:#18181b;{1}\">{2}</td>",
                align(i),
                if i < table.keys { "" } else { "white-space:nowrap;" },
                escape_html(&one_line(cell))
            );
        }
        out.push_str("</tr>\n");
    };
    for cells in &table.rows {
        row(&mut out, cells, false);
    }
    if let Some(cells) = &table.total {
        row(&mut out, cells, true);
    }
    out.push_str("</table>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(cells: &[&str]) -> Vec<String> {
        cells.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn escapes_everything_markup_could_hide_in() {
        assert_eq!(
            escape_html("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
        assert_eq!(escape_html("AT&T"), "AT&amp;T");
        // Already-escaped text is escaped again, not trusted.
        assert_eq!(escape_html("&amp;"), "&amp;amp;");
        assert_eq!(escape_html("plain café"), "plain café");
        assert_eq!(one_line("a\r\nb\tc"), "a  b c");
    }

    #[test]
    fn text_aligns_columns_and_html_uses_tables() {
        let mut doc = Doc::default();
        doc.title("Title <b>");
        doc.para(vec![
            text("Run "),
            code("meter x"),
            text(" & "),
            strong("now"),
        ]);
        doc.facts(vec![
            ("Spent".into(), "$1.00".into()),
            ("Limit".into(), "$500.00".into()),
        ]);
        doc.heading("Top");
        doc.table(Table {
            header: strings(&["NAME", "COST"]),
            rows: vec![strings(&["coder", "$1.00"]), strings(&["a", "$100.00"])],
            keys: 1,
            total: Some(strings(&["TOTAL", "$101.00"])),
        });
        doc.warning(vec![text("3 calls <unpriced>")]);
        doc.footer(vec![text("Sent by meter")]);
        let text = doc.text();
        assert_eq!(
            text,
            "Title <b>\n\
             =========\n\
             \n\
             Run `meter x` & now\n\
             \n\
             Spent:  $1.00\n\
             Limit:  $500.00\n\
             \n\
             Top\n\
             ---\n\
             NAME      COST\n\
             coder    $1.00\n\
             a      $100.00\n\
             TOTAL  $101.00\n\
             \n\
             Warning: 3 calls <unpriced>\n\
             \n\
             -- \n\
             Sent by meter\n"
        );
        let html = doc.html("Subject & <more>");
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<title>Subject &amp; &lt;more&gt;</title>"));
        assert!(html.contains(">Title &lt;b&gt;</h1>"));
        assert!(html.contains("Run <code"));
        assert!(html.contains(">meter x</code> &amp; <strong>now</strong></p>"));
        assert!(html.contains(">Spent</td><td"));
        assert!(html.contains(">$500.00</td></tr>"));
        assert!(html.contains("text-align:right;"));
        assert!(html.contains(">$101.00</td>\n</tr>"));
        assert!(html.lines().all(|line| line.len() < 998));
        assert!(html.contains("<strong>Warning:</strong> 3 calls &lt;unpriced&gt;</td>"));
        assert!(!html.contains("<unpriced>"));
        // Email-client safe: no scripts, no style sheets, no external resources.
        for banned in [
            "<script", "<style", "<link", "src=", "http://", "https://", "class=",
        ] {
            assert!(!html.contains(banned), "{banned}");
        }
    }
}
