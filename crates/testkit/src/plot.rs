//! SVG bar charts for the benchmark binaries: one group of horizontal bars per case, one
//! bar per tool, each labelled with its value; plain SVG text, no dependency.

use std::fmt::Write as _;

/// One bar: the tool's name and its value (in the chart's unit).
#[derive(Clone, Debug)]
pub struct Bar {
    /// The tool (or setting), shown left of the bar.
    pub label: String,
    /// The value; the bar's length is proportional to it.
    pub value: f64,
}

/// One case: a heading and its bars.
#[derive(Clone, Debug)]
pub struct Group {
    /// The case, shown above its bars.
    pub title: String,
    /// Bars, drawn top to bottom.
    pub bars: Vec<Bar>,
}

/// A group of `(label, value)` bars.
pub fn group(title: &str, bars: &[(&str, f64)]) -> Group {
    Group {
        title: title.to_string(),
        bars: bars
            .iter()
            .map(|(l, v)| Bar {
                label: l.to_string(),
                value: *v,
            })
            .collect(),
    }
}

const COLOURS: [&str; 4] = ["#2b6cb0", "#c05621", "#2f855a", "#6b46c1"];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The chart as an SVG document: `title` on top, `unit` after every value; each group's
/// bars share one scale (the largest value of the group), so groups of different
/// magnitudes stay readable. Bar colours follow the bar's position in its group.
pub fn bars_svg(title: &str, unit: &str, groups: &[Group]) -> String {
    let (width, label_w, bar_h, gap) = (720.0, 170.0, 22.0, 6.0);
    let bar_max = width - label_w - 130.0;
    let mut y = 40.0;
    let mut body = String::new();
    for g in groups {
        let _ = writeln!(
            body,
            r#"<text x="10" y="{:.0}" font-weight="bold">{}</text>"#,
            y + 14.0,
            escape(&g.title)
        );
        y += 24.0;
        let max = g.bars.iter().map(|b| b.value).fold(0.0_f64, f64::max);
        for (i, b) in g.bars.iter().enumerate() {
            let w = if max > 0.0 && b.value.is_finite() {
                (b.value / max * bar_max).max(1.0)
            } else {
                1.0
            };
            let _ = writeln!(
                body,
                r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{}</text><rect x="{label_w:.0}" y="{y:.0}" width="{w:.1}" height="{bar_h:.0}" fill="{}"/><text x="{:.1}" y="{:.0}">{} {}</text>"#,
                label_w - 8.0,
                y + 15.0,
                escape(&b.label),
                COLOURS[i % COLOURS.len()],
                label_w + w + 6.0,
                y + 15.0,
                format_value(b.value),
                escape(unit),
            );
            y += bar_h + gap;
        }
        y += 12.0;
    }
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{:.0}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="15" font-weight="bold">{}</text>
{body}</svg>
"#,
        y + 8.0,
        escape(title)
    )
}

/// Three significant digits at most (`0.412`, `12.3`, `1234`).
fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return "–".into();
    }
    let a = v.abs();
    if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_within_their_group_and_text_is_escaped() {
        let svg = bars_svg(
            "a <b> & c",
            "s",
            &[
                group("case 1", &[("ido", 2.0), ("govc", 4.0)]),
                group("case 2", &[("x", 0.5)]),
            ],
        );
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert!(svg.contains(r#"width="420.0""#), "{svg}"); // the group's largest bar
        assert!(svg.contains(r#"width="210.0""#), "{svg}"); // half of it
        assert!(svg.contains(">2.00 s<") && svg.contains(">0.500 s<"));
    }
}
