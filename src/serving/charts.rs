//! The dashboard's charts, drawn on the server as small SVG documents: a title, a `<title>` for
//! screen readers, a y axis with gridlines and labels, the first, middle and last dates on the
//! x axis, a legend, and a `<title>` on each point or bar that says its date and value. No
//! script, no external resource: the page shows them as they are sent.
//!
//! Every text that goes into the SVG is escaped here ([`escape`]); the page inserts the SVG as
//! it is.

use std::fmt::Write as _;

/// Width and height of the drawing (the page scales it to its column).
const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 30.0;
/// Gridlines above zero.
const TICKS: usize = 4;

/// How a chart draws its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One line per series, a dot per value; a missing value breaks the line.
    Lines,
    /// The series side by side at each date.
    Bars,
    /// The series on top of each other at each date.
    Stacked,
}

/// One series of values, one per label (`None`: no value that day).
#[derive(Debug, Clone)]
pub struct Series {
    pub name: &'static str,
    /// A CSS colour.
    pub colour: &'static str,
    pub values: Vec<Option<f64>>,
}

/// A chart: its stable id (the page and its tests find it by it), title, the unit of its
/// values, the x labels (dates) and the series.
#[derive(Debug, Clone)]
pub struct Chart {
    pub id: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub kind: Kind,
    pub labels: Vec<String>,
    pub series: Vec<Series>,
    /// The top of the y axis when fixed (100 for a percentage), else from the values.
    pub y_max: Option<f64>,
    /// Lines only: the y axis spans the values with a margin (in steps of 5), not zero to the
    /// top, so that moves of a point or two show (the averages, which stay near one level).
    pub fit: bool,
}

/// Escapes text for an XML text node or attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A value as the chart's labels show it: whole numbers without decimals, others with two.
fn number(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// The smallest "nice" number (1, 2, 2.5 or 5 times a power of ten) times [`TICKS`] at or above
/// `max`, so the gridlines fall on round values.
fn nice_top(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return TICKS as f64;
    }
    let raw = max / TICKS as f64;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    step * TICKS as f64
}

impl Chart {
    /// The chart as an `<svg>` element.
    pub fn svg(&self) -> String {
        let n = self.labels.len();
        let mut out = String::new();
        let title_id = format!("{}-title", self.id);
        let _ = write!(
            out,
            r#"<svg id="{id}" class="chart" data-points="{n}" role="img" aria-labelledby="{title_id}" viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">"#,
            id = escape(self.id),
            title_id = escape(&title_id),
        );
        let _ = write!(
            out,
            r#"<title id="{}">{}</title>"#,
            escape(&title_id),
            escape(&self.description())
        );
        let _ = write!(
            out,
            r#"<text class="chart-title" x="{LEFT}" y="16">{}</text>"#,
            escape(self.title)
        );
        self.legend(&mut out);
        let plot_w = WIDTH - LEFT - RIGHT;
        let plot_h = HEIGHT - TOP - BOTTOM;
        let (bottom, top) = self.y_range();
        let y = |v: f64| TOP + plot_h - ((v - bottom) / (top - bottom)).clamp(0.0, 1.0) * plot_h;
        // Gridlines and the y labels.
        for i in 0..=TICKS {
            let v = bottom + (top - bottom) * i as f64 / TICKS as f64;
            let _ = write!(
                out,
                r#"<line class="grid" x1="{LEFT}" x2="{x2}" y1="{yy:.1}" y2="{yy:.1}"/><text class="axis" x="{lx}" y="{ly:.1}" text-anchor="end">{label}</text>"#,
                x2 = WIDTH - RIGHT,
                yy = y(v),
                lx = LEFT - 6.0,
                ly = y(v) + 4.0,
                label = escape(&format!("{}{}", number(v), self.unit_suffix())),
            );
        }
        let _ = write!(
            out,
            r#"<line class="axis-line" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{b}"/><line class="axis-line" x1="{LEFT}" x2="{r}" y1="{b}" y2="{b}"/>"#,
            b = TOP + plot_h,
            r = WIDTH - RIGHT,
        );
        if n == 0 {
            let _ = write!(
                out,
                r#"<text class="empty" x="{x}" y="{y:.1}" text-anchor="middle">no runs in this window</text></svg>"#,
                x = LEFT + plot_w / 2.0,
                y = TOP + plot_h / 2.0,
            );
            return out;
        }
        let slot = plot_w / n as f64;
        let centre = |i: usize| LEFT + slot * (i as f64 + 0.5);
        // The x labels: first, middle and last date.
        let mut shown: Vec<usize> = vec![0, n / 2, n - 1];
        shown.dedup();
        for i in shown {
            let anchor = match i {
                0 if n > 1 => "start",
                i if i == n - 1 && n > 1 => "end",
                _ => "middle",
            };
            let x = match anchor {
                "start" => LEFT,
                "end" => WIDTH - RIGHT,
                _ => centre(i),
            };
            let _ = write!(
                out,
                r#"<text class="axis" x="{x:.1}" y="{ly}" text-anchor="{anchor}">{}</text>"#,
                escape(&self.labels[i]),
                ly = HEIGHT - 10.0,
            );
        }
        match self.kind {
            Kind::Lines => self.lines(&mut out, &centre, &y),
            Kind::Bars | Kind::Stacked => self.bars(&mut out, slot, &centre, &y),
        }
        out.push_str("</svg>");
        out
    }

    /// What the chart shows, for the `<title>`.
    fn description(&self) -> String {
        let names: Vec<&str> = self.series.iter().map(|s| s.name).collect();
        match (self.labels.first(), self.labels.last()) {
            (Some(first), Some(last)) => format!(
                "{}: {} from {first} to {last} ({} dates)",
                self.title,
                names.join(", "),
                self.labels.len()
            ),
            _ => format!("{}: no runs in this window", self.title),
        }
    }

    fn unit_suffix(&self) -> &'static str {
        match self.unit {
            "%" => "%",
            _ => "",
        }
    }

    /// The bottom and top of the y axis.
    fn y_range(&self) -> (f64, f64) {
        let top = self.y_max.unwrap_or_else(|| nice_top(self.max_value()));
        let values = || {
            self.series
                .iter()
                .flat_map(|s| s.values.iter().copied().flatten())
        };
        if !self.fit || self.kind != Kind::Lines || values().next().is_none() {
            return (0.0, top);
        }
        let lo = values().fold(f64::INFINITY, f64::min);
        let hi = values().fold(f64::NEG_INFINITY, f64::max);
        let margin = ((hi - lo) * 0.15).max(1.0);
        let bottom = (((lo - margin) / 5.0).floor() * 5.0).max(0.0);
        let fitted = (((hi + margin) / 5.0).ceil() * 5.0).min(top);
        if fitted > bottom {
            (bottom, fitted)
        } else {
            (0.0, top)
        }
    }

    fn max_value(&self) -> f64 {
        let n = self.labels.len();
        if self.kind == Kind::Stacked {
            (0..n)
                .map(|i| {
                    self.series
                        .iter()
                        .filter_map(|s| s.values.get(i).copied().flatten())
                        .sum::<f64>()
                })
                .fold(0.0, f64::max)
        } else {
            self.series
                .iter()
                .flat_map(|s| s.values.iter().copied().flatten())
                .fold(0.0, f64::max)
        }
    }

    fn legend(&self, out: &mut String) {
        let mut x = LEFT;
        for s in &self.series {
            let _ = write!(
                out,
                r#"<rect x="{x:.1}" y="26" width="10" height="10" fill="{c}"/><text class="legend" x="{tx:.1}" y="35">{name}</text>"#,
                c = escape(s.colour),
                tx = x + 14.0,
                name = escape(s.name),
            );
            x += 14.0 + 7.0 * s.name.len() as f64 + 16.0;
        }
    }

    /// The point's tooltip: `date: series value unit`.
    fn tip(&self, i: usize, s: &Series, v: f64) -> String {
        let unit = match self.unit {
            "" | "%" => self.unit.to_owned(),
            u => format!(" {u}"),
        };
        escape(&format!(
            "{}: {} {}{unit}",
            self.labels[i],
            s.name,
            number(v)
        ))
    }

    fn lines(&self, out: &mut String, centre: &dyn Fn(usize) -> f64, y: &dyn Fn(f64) -> f64) {
        let radius = if self.labels.len() > 120 { 1.5 } else { 3.0 };
        for s in &self.series {
            let mut run: Vec<String> = Vec::new();
            let flush = |run: &mut Vec<String>, out: &mut String| {
                if run.len() > 1 {
                    let _ = write!(
                        out,
                        r#"<polyline class="line" fill="none" stroke="{}" points="{}"/>"#,
                        escape(s.colour),
                        run.join(" ")
                    );
                }
                run.clear();
            };
            for (i, v) in s.values.iter().enumerate() {
                match v {
                    Some(v) => run.push(format!("{:.1},{:.1}", centre(i), y(*v))),
                    None => flush(&mut run, out),
                }
            }
            flush(&mut run, out);
            for (i, v) in s.values.iter().enumerate() {
                if let Some(v) = v {
                    let _ = write!(
                        out,
                        r#"<circle class="point" cx="{:.1}" cy="{:.1}" r="{radius}" fill="{}"><title>{}</title></circle>"#,
                        centre(i),
                        y(*v),
                        escape(s.colour),
                        self.tip(i, s, *v)
                    );
                }
            }
        }
    }

    fn bars(
        &self,
        out: &mut String,
        slot: f64,
        centre: &dyn Fn(usize) -> f64,
        y: &dyn Fn(f64) -> f64,
    ) {
        let width = (slot * 0.8).max(0.5);
        let k = self.series.len().max(1) as f64;
        for i in 0..self.labels.len() {
            let mut base = 0.0;
            for (j, s) in self.series.iter().enumerate() {
                let Some(v) = s.values.get(i).copied().flatten() else {
                    continue;
                };
                let (x, w, from) = match self.kind {
                    Kind::Stacked => (centre(i) - width / 2.0, width, base),
                    _ => (
                        centre(i) - width / 2.0 + width / k * j as f64,
                        width / k,
                        0.0,
                    ),
                };
                let (top, bottom) = (y(from + v), y(from));
                let _ = write!(
                    out,
                    r#"<rect class="bar" x="{x:.2}" y="{top:.2}" width="{w:.2}" height="{h:.2}" fill="{c}"><title>{tip}</title></rect>"#,
                    h = (bottom - top).max(0.0),
                    c = escape(s.colour),
                    tip = self.tip(i, s, v),
                );
                if self.kind == Kind::Stacked {
                    base += v;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chart(kind: Kind, labels: usize) -> Chart {
        Chart {
            id: "chart-x",
            title: "A <chart> & more",
            unit: "%",
            kind,
            labels: (0..labels)
                .map(|i| format!("2026-11-{:02}", i + 1))
                .collect(),
            series: vec![
                Series {
                    name: "one",
                    colour: "#123456",
                    values: (0..labels).map(|i| Some(i as f64)).collect(),
                },
                Series {
                    name: "two",
                    colour: "#654321",
                    values: (0..labels).map(|i| (i % 2 == 0).then_some(1.5)).collect(),
                },
            ],
            y_max: None,
            fit: false,
        }
    }

    #[test]
    fn a_chart_is_one_svg_with_its_id_a_title_and_a_mark_per_value() {
        let svg = chart(Kind::Lines, 5).svg();
        assert!(svg.starts_with(r#"<svg id="chart-x""#), "{svg}");
        assert!(svg.ends_with("</svg>"));
        assert!(svg.contains(r#"data-points="5""#));
        assert!(svg.contains("<title id=\"chart-x-title\">A &lt;chart&gt; &amp; more: one, two from 2026-11-01 to 2026-11-05 (5 dates)</title>"), "{svg}");
        assert_eq!(svg.matches("<circle").count(), 5 + 3);
        assert!(!svg.contains("<chart>"), "escaped");
        let bars = chart(Kind::Bars, 4).svg();
        assert_eq!(bars.matches(r#"<rect class="bar""#).count(), 4 + 2);
        let stacked = chart(Kind::Stacked, 4).svg();
        assert_eq!(stacked.matches(r#"<rect class="bar""#).count(), 4 + 2);
    }

    #[test]
    fn an_empty_window_still_draws_the_chart_and_says_so() {
        let svg = chart(Kind::Lines, 0).svg();
        assert!(svg.contains(r#"id="chart-x""#));
        assert!(svg.contains("no runs in this window"));
        assert!(svg.contains(r#"data-points="0""#));
    }

    #[test]
    fn the_axis_tops_at_a_round_value() {
        assert_eq!(nice_top(0.0), 4.0);
        assert_eq!(nice_top(3.0), 4.0);
        assert_eq!(nice_top(7.0), 8.0);
        assert_eq!(nice_top(93.0), 100.0);
        assert_eq!(nice_top(1234.0), 2000.0);
    }

    #[test]
    fn a_fitted_axis_spans_the_values_in_steps_of_five_within_the_fixed_top() {
        let mut c = chart(Kind::Lines, 3);
        c.series = vec![Series {
            name: "overall",
            colour: "#123456",
            values: vec![Some(49.2), Some(51.7), None],
        }];
        c.y_max = Some(100.0);
        assert_eq!(c.y_range(), (0.0, 100.0), "not fitted");
        c.fit = true;
        assert_eq!(c.y_range(), (45.0, 55.0));
        c.series[0].values = vec![Some(99.5), Some(99.9), None];
        assert_eq!(c.y_range(), (95.0, 100.0), "never above the fixed top");
        c.series[0].values = vec![None, None, None];
        assert_eq!(c.y_range(), (0.0, 100.0), "no values: the whole axis");
        assert!(c.svg().contains(">100"));
    }
}
