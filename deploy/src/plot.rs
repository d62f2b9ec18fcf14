//! A small, dependency-free SVG plot writer: line and scatter series on linear
//! or logarithmic axes, with ticks, axis labels, a legend and an optional set
//! of labelled marked points. Text is plain SVG `<text>` (the viewer's
//! sans-serif font), so no fonts are needed.
//!
//! ```
//! use offramp::plot::{Plot, Series};
//! let svg = Plot::new("accuracy vs compute", "relative compute", "accuracy (%)")
//!     .series(Series::line("max-prob", vec![(0.3, 97.0), (0.6, 98.8), (1.0, 99.0)]))
//!     .mark("full network", 1.0, 99.0)
//!     .to_svg();
//! assert!(svg.starts_with("<svg"));
//! ```

use std::fmt::Write as _;
use std::path::Path;

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A polyline through the points in order.
    Line,
    /// A dot per point.
    Points,
    /// Both.
    LinePoints,
}

/// One named series of `(x, y)` points. Non-finite points (and non-positive
/// ones on a log axis) are skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
    /// Any SVG colour; `None` takes the next one of the palette.
    pub color: Option<String>,
}

impl Series {
    pub fn new(name: impl Into<String>, points: Vec<(f64, f64)>, style: Style) -> Self {
        Self { name: name.into(), points, style, color: None }
    }

    pub fn line(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, points, Style::Line)
    }

    pub fn points(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, points, Style::Points)
    }

    pub fn line_points(name: impl Into<String>, points: Vec<(f64, f64)>) -> Self {
        Self::new(name, points, Style::LinePoints)
    }

    pub fn color(mut self, color: impl Into<String>) -> Self {
        self.color = Some(color.into());
        self
    }
}

/// A labelled point drawn as a diamond on top of the series.
#[derive(Debug, Clone, PartialEq)]
pub struct Mark {
    pub label: String,
    pub x: f64,
    pub y: f64,
}

/// Where the legend goes (inside the plot area).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Legend {
    #[default]
    TopRight,
    TopLeft,
    BottomRight,
    BottomLeft,
    Hidden,
}

/// A plot: build it with the chained setters, then [`Plot::to_svg`] or [`Plot::save`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Size of the whole picture in pixels.
    pub width: f64,
    pub height: f64,
    /// Fixed axis ranges; `None`: fitted to the data with a small margin.
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    pub x_log: bool,
    pub y_log: bool,
    pub series: Vec<Series>,
    pub marks: Vec<Mark>,
    /// Legend entry of the marked points (none when empty).
    pub marks_name: String,
    pub legend: Legend,
}

const PALETTE: [&str; 10] =
    ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const FONT: f64 = 12.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 36.0;
const MARGIN_BOTTOM: f64 = 52.0;

impl Plot {
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, y_label: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            width: 720.0,
            height: 480.0,
            x_range: None,
            y_range: None,
            x_log: false,
            y_log: false,
            series: Vec::new(),
            marks: Vec::new(),
            marks_name: String::new(),
            legend: Legend::default(),
        }
    }

    pub fn series(mut self, series: Series) -> Self {
        self.series.push(series);
        self
    }

    /// Adds a labelled marked point.
    pub fn mark(mut self, label: impl Into<String>, x: f64, y: f64) -> Self {
        self.marks.push(Mark { label: label.into(), x, y });
        self
    }

    /// Names the marked point set in the legend.
    pub fn marks_name(mut self, name: impl Into<String>) -> Self {
        self.marks_name = name.into();
        self
    }

    pub fn size(mut self, width: f64, height: f64) -> Self {
        (self.width, self.height) = (width.max(200.0), height.max(150.0));
        self
    }

    pub fn x_range(mut self, lo: f64, hi: f64) -> Self {
        self.x_range = Some((lo, hi));
        self
    }

    pub fn y_range(mut self, lo: f64, hi: f64) -> Self {
        self.y_range = Some((lo, hi));
        self
    }

    pub fn x_log(mut self, on: bool) -> Self {
        self.x_log = on;
        self
    }

    pub fn y_log(mut self, on: bool) -> Self {
        self.y_log = on;
        self
    }

    pub fn legend(mut self, legend: Legend) -> Self {
        self.legend = legend;
        self
    }

    /// Writes the SVG to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> std::io::Result<()> {
        std::fs::write(path, self.to_svg())
    }

    fn usable(&self, (x, y): (f64, f64)) -> bool {
        x.is_finite() && y.is_finite() && (!self.x_log || x > 0.0) && (!self.y_log || y > 0.0)
    }

    /// The picture as a standalone SVG document.
    pub fn to_svg(&self) -> String {
        let (w, h) = (self.width, self.height);
        let (left, right, top, bottom) = (MARGIN_LEFT, w - MARGIN_RIGHT, MARGIN_TOP, h - MARGIN_BOTTOM);
        let points: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .chain(self.marks.iter().map(|m| (m.x, m.y)))
            .filter(|&p| self.usable(p))
            .collect();
        let x_axis = Axis::fit(points.iter().map(|p| p.0), self.x_range, self.x_log);
        let y_axis = Axis::fit(points.iter().map(|p| p.1), self.y_range, self.y_log);
        let sx = |x: f64| left + x_axis.frac(x) * (right - left);
        let sy = |y: f64| bottom - y_axis.frac(y) * (bottom - top);

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="{FONT}">"#
        );
        let _ = writeln!(s, r#"<rect x="0" y="0" width="{w}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle" font-size="{}" font-weight="bold">{}</text>"#,
            f(w / 2.0),
            f(top / 2.0 + 5.0),
            FONT + 3.0,
            esc(&self.title)
        );

        // Grid, ticks and tick labels.
        let _ = writeln!(s, r##"<g class="grid" stroke="#e0e0e0" stroke-width="1">"##);
        for t in &x_axis.ticks {
            let _ = writeln!(s, r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}"/>"#, f(sx(*t)), f(top), f(bottom));
        }
        for t in &y_axis.ticks {
            let _ = writeln!(s, r#"<line x1="{1}" y1="{0}" x2="{2}" y2="{0}"/>"#, f(sy(*t)), f(left), f(right));
        }
        let _ = writeln!(s, "</g>");
        let _ = writeln!(s, r#"<g class="axes" stroke="black" stroke-width="1" fill="none">"#);
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="{}" height="{}"/>"#,
            f(left),
            f(top),
            f(right - left),
            f(bottom - top)
        );
        for t in &x_axis.ticks {
            let _ =
                writeln!(s, r#"<line x1="{0}" y1="{1}" x2="{0}" y2="{2}"/>"#, f(sx(*t)), f(bottom), f(bottom + 5.0));
        }
        for t in &y_axis.ticks {
            let _ = writeln!(s, r#"<line x1="{1}" y1="{0}" x2="{2}" y2="{0}"/>"#, f(sy(*t)), f(left - 5.0), f(left));
        }
        let _ = writeln!(s, "</g>");
        let _ = writeln!(s, r#"<g class="tick-labels" fill="black">"#);
        for t in &x_axis.ticks {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
                f(sx(*t)),
                f(bottom + 18.0),
                esc(&x_axis.label(*t))
            );
        }
        for t in &y_axis.ticks {
            let _ = writeln!(
                s,
                r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
                f(left - 8.0),
                f(sy(*t) + 4.0),
                esc(&y_axis.label(*t))
            );
        }
        let _ = writeln!(s, "</g>");
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            f((left + right) / 2.0),
            f(h - 12.0),
            esc(&self.x_label)
        );
        let (yx, yy) = (16.0, (top + bottom) / 2.0);
        let _ = writeln!(
            s,
            r#"<text x="{0}" y="{1}" text-anchor="middle" transform="rotate(-90 {0} {1})">{2}</text>"#,
            f(yx),
            f(yy),
            esc(&self.y_label)
        );

        // Series, clipped to the plot area.
        let _ = writeln!(
            s,
            r#"<clipPath id="plot-area"><rect x="{}" y="{}" width="{}" height="{}"/></clipPath>"#,
            f(left),
            f(top),
            f(right - left),
            f(bottom - top)
        );
        let _ = writeln!(s, r#"<g clip-path="url(#plot-area)">"#);
        let colors: Vec<String> = self
            .series
            .iter()
            .enumerate()
            .map(|(i, se)| se.color.clone().unwrap_or_else(|| PALETTE[i % PALETTE.len()].to_string()))
            .collect();
        for (se, color) in self.series.iter().zip(&colors) {
            let pts: Vec<(f64, f64)> =
                se.points.iter().copied().filter(|&p| self.usable(p)).map(|(x, y)| (sx(x), sy(y))).collect();
            let _ = writeln!(s, r#"<g class="series" data-name="{}">"#, esc(&se.name));
            if matches!(se.style, Style::Line | Style::LinePoints) && !pts.is_empty() {
                let path: Vec<String> = pts.iter().map(|&(x, y)| format!("{},{}", f(x), f(y))).collect();
                let _ = writeln!(
                    s,
                    r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                    esc(color),
                    path.join(" ")
                );
            }
            if matches!(se.style, Style::Points | Style::LinePoints) {
                for &(x, y) in &pts {
                    let _ = writeln!(s, r#"<circle cx="{}" cy="{}" r="3" fill="{}"/>"#, f(x), f(y), esc(color));
                }
            }
            let _ = writeln!(s, "</g>");
        }
        if !self.marks.is_empty() {
            let _ = writeln!(s, r#"<g class="marks">"#);
            for m in self.marks.iter().filter(|m| self.usable((m.x, m.y))) {
                let (x, y) = (sx(m.x), sy(m.y));
                let _ = writeln!(
                    s,
                    r#"<path d="M{} {} L{} {} L{} {} L{} {} Z" fill="black" stroke="white" stroke-width="1"/>"#,
                    f(x),
                    f(y - 6.0),
                    f(x + 6.0),
                    f(y),
                    f(x),
                    f(y + 6.0),
                    f(x - 6.0),
                    f(y)
                );
                // Labels go left of points in the right half so they stay inside.
                let (dx, anchor) = if x > (left + right) / 2.0 { (-9.0, "end") } else { (9.0, "start") };
                let _ = writeln!(
                    s,
                    r#"<text x="{}" y="{}" text-anchor="{anchor}" font-size="{}">{}</text>"#,
                    f(x + dx),
                    f(y - 8.0),
                    FONT - 1.0,
                    esc(&m.label)
                );
            }
            let _ = writeln!(s, "</g>");
        }
        let _ = writeln!(s, "</g>");

        // Legend.
        let mut entries: Vec<(&str, Option<&str>, Style)> =
            self.series.iter().zip(&colors).map(|(se, c)| (se.name.as_str(), Some(c.as_str()), se.style)).collect();
        if !self.marks_name.is_empty() && !self.marks.is_empty() {
            entries.push((self.marks_name.as_str(), None, Style::Points));
        }
        if self.legend != Legend::Hidden && !entries.is_empty() {
            let line_h = FONT + 6.0;
            let text_w = entries.iter().map(|e| e.0.chars().count()).max().unwrap_or(0) as f64 * FONT * 0.6;
            let (bw, bh) = (text_w + 44.0, entries.len() as f64 * line_h + 8.0);
            let bx = match self.legend {
                Legend::TopLeft | Legend::BottomLeft => left + 10.0,
                _ => right - 10.0 - bw,
            };
            let by = match self.legend {
                Legend::BottomLeft | Legend::BottomRight => bottom - 10.0 - bh,
                _ => top + 10.0,
            };
            let _ = writeln!(s, r#"<g class="legend">"#);
            let _ = writeln!(
                s,
                r##"<rect x="{}" y="{}" width="{}" height="{}" fill="white" fill-opacity="0.85" stroke="#999"/>"##,
                f(bx),
                f(by),
                f(bw),
                f(bh)
            );
            for (i, (name, color, style)) in entries.iter().enumerate() {
                let y = by + 4.0 + line_h * (i as f64 + 0.5);
                let (x0, x1) = (bx + 8.0, bx + 32.0);
                match color {
                    Some(c) => {
                        if matches!(style, Style::Line | Style::LinePoints) {
                            let _ = writeln!(
                                s,
                                r#"<line x1="{0}" y1="{2}" x2="{1}" y2="{2}" stroke="{3}" stroke-width="2"/>"#,
                                f(x0),
                                f(x1),
                                f(y),
                                esc(c)
                            );
                        }
                        if matches!(style, Style::Points | Style::LinePoints) {
                            let _ = writeln!(
                                s,
                                r#"<circle cx="{}" cy="{}" r="3" fill="{}"/>"#,
                                f((x0 + x1) / 2.0),
                                f(y),
                                esc(c)
                            );
                        }
                    }
                    None => {
                        let cx = (x0 + x1) / 2.0;
                        let _ = writeln!(
                            s,
                            r#"<path d="M{} {} L{} {} L{} {} L{} {} Z" fill="black"/>"#,
                            f(cx),
                            f(y - 5.0),
                            f(cx + 5.0),
                            f(y),
                            f(cx),
                            f(y + 5.0),
                            f(cx - 5.0),
                            f(y)
                        );
                    }
                }
                let _ = writeln!(s, r#"<text x="{}" y="{}">{}</text>"#, f(x1 + 6.0), f(y + 4.0), esc(name));
            }
            let _ = writeln!(s, "</g>");
        }
        s.push_str("</svg>\n");
        s
    }
}

/// An axis: its range (in log10 units on a log axis) and tick positions (data units).
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    ticks: Vec<f64>,
    /// Decimals of linear tick labels.
    decimals: usize,
}

impl Axis {
    fn fit(values: impl Iterator<Item = f64>, fixed: Option<(f64, f64)>, log: bool) -> Self {
        let t = |v: f64| if log { v.log10() } else { v };
        let (mut lo, mut hi) = match fixed {
            Some((a, b)) if a.is_finite() && b.is_finite() && (!log || (a > 0.0 && b > 0.0)) => {
                (t(a.min(b)), t(a.max(b)))
            }
            _ => {
                let (lo, hi) = values.map(t).fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| (l.min(v), h.max(v)));
                if lo.is_finite() {
                    let pad = if hi > lo { (hi - lo) * 0.05 } else { 0.0 };
                    (lo - pad, hi + pad)
                } else {
                    (0.0, 1.0)
                }
            }
        };
        if hi - lo <= f64::EPSILON * hi.abs().max(1.0) {
            let d = if log { 0.5 } else { lo.abs().max(1.0) * 0.05 };
            (lo, hi) = (lo - d, hi + d);
        }
        let (ticks, decimals) = if log {
            let mut ticks: Vec<f64> = (lo.ceil() as i64..=hi.floor() as i64).map(|e| 10f64.powi(e as i32)).collect();
            if ticks.len() < 3 {
                // Few decades: add 2x and 5x ticks.
                ticks = (lo.floor() as i64..=hi.ceil() as i64)
                    .flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e as i32)))
                    .filter(|v| (lo..=hi).contains(&v.log10()))
                    .collect();
            }
            (ticks, 0)
        } else {
            let step = nice_step((hi - lo) / 6.0);
            let first = (lo / step).ceil() as i64;
            let last = (hi / step).floor() as i64;
            let ticks = (first..=last).map(|k| k as f64 * step).collect();
            (ticks, (-step.log10().floor()).max(0.0) as usize)
        };
        Axis { lo, hi, log, ticks, decimals }
    }

    /// Position of data value `v` along the axis in `[0, 1]`.
    fn frac(&self, v: f64) -> f64 {
        let v = if self.log { v.log10() } else { v };
        (v - self.lo) / (self.hi - self.lo)
    }

    fn label(&self, v: f64) -> String {
        if self.log {
            let a = v.abs();
            if (1e-3..1e5).contains(&a) {
                let s = format!("{v:.3}");
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            } else {
                format!("{v:.0e}")
            }
        } else {
            let s = format!("{:.*}", self.decimals, v);
            if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') {
                s[1..].to_string()
            } else {
                s
            }
        }
    }
}

/// The smallest of 1, 2, 5 × 10^k at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let m = raw / mag;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

/// A coordinate with two decimals, trailing zeros dropped.
fn f(v: f64) -> String {
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// Escapes text for SVG content and attribute values.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => {}
            c => out.push(c),
        }
    }
    out
}

/// Checks that `svg` is well-formed XML as far as tags go: every element
/// closed in order, attributes quoted, no stray `<` or `&`. Used by tests here
/// and by other commands' tests.
pub fn check_well_formed(svg: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    let mut roots = 0;
    while let Some(open) = rest.find('<') {
        check_text(&rest[..open])?;
        let after = &rest[open + 1..];
        let close = after.find('>').ok_or("unterminated tag")?;
        let tag = &after[..close];
        rest = &after[close + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().ok_or_else(|| format!("</{name}> without an open element"))?;
            if top != name.trim() {
                return Err(format!("</{name}> closes <{top}>"));
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_:".contains(c)) {
            return Err(format!("bad element name in <{tag}>"));
        }
        check_attributes(&body[name.len()..])?;
        if stack.is_empty() {
            roots += 1;
        }
        if !self_closing {
            stack.push(name);
        }
    }
    check_text(rest)?;
    if let Some(open) = stack.last() {
        return Err(format!("<{open}> never closed"));
    }
    if roots != 1 {
        return Err(format!("{roots} root elements"));
    }
    Ok(())
}

fn check_text(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        let entity = &rest[i..];
        let end = entity.find(';').ok_or_else(|| format!("bare & in {text:?}"))?;
        if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&&entity[..=end]) {
            return Err(format!("unknown entity {}", &entity[..=end]));
        }
        rest = &entity[end + 1..];
    }
    Ok(())
}

fn check_attributes(mut attrs: &str) -> Result<(), String> {
    loop {
        attrs = attrs.trim_start();
        if attrs.is_empty() {
            return Ok(());
        }
        let eq = attrs.find('=').ok_or_else(|| format!("attribute without value: {attrs:?}"))?;
        let name = attrs[..eq].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_:".contains(c)) {
            return Err(format!("bad attribute name {name:?}"));
        }
        let value = &attrs[eq + 1..];
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'').ok_or("unquoted attribute")?;
        let end = value[1..].find(quote).ok_or("unterminated attribute value")?;
        let v = &value[1..1 + end];
        if v.contains('<') {
            return Err(format!("< in attribute {name}"));
        }
        check_text(v)?;
        attrs = &value[end + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Plot {
        Plot::new("Accuracy <vs> compute & more", "relative compute", "accuracy (%)")
            .series(Series::line("max-prob", vec![(0.2, 95.0), (0.5, 98.0), (1.0, 99.0), (f64::NAN, 1.0)]))
            .series(Series::points("exits \"forced\"", vec![(0.1, 90.0), (1.0, 99.0)]))
            .series(Series::line_points("entropy", vec![(0.3, 96.0), (0.9, 98.9)]).color("teal"))
            .mark("policy", 0.4, 98.5)
            .mark("full network", 1.0, 99.0)
            .marks_name("marked")
            .legend(Legend::BottomRight)
    }

    #[test]
    fn writes_well_formed_svg_with_every_series() {
        let svg = sample().to_svg();
        check_well_formed(&svg).unwrap();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.contains("Accuracy &lt;vs&gt; compute &amp; more"));
        assert_eq!(svg.matches(r#"<g class="series""#).count(), 3);
        assert_eq!(svg.matches("<polyline").count(), 2);
        // 2 + 2 points plus the legend dots of the two point series.
        assert_eq!(svg.matches("<circle").count(), 6);
        // The NaN point is skipped: three vertices.
        let line = svg.lines().find(|l| l.contains("<polyline")).unwrap();
        let pts = line.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
        assert_eq!(pts.split(' ').count(), 3);
        for name in ["max-prob", "exits &quot;forced&quot;", "entropy", "policy", "full network", "marked"] {
            assert!(svg.contains(name), "{name} missing");
        }
        assert!(svg.contains("stroke=\"teal\""));
        // Ticks on a 0.1..1.0 x range include 0.2 and 1.0 labelled with one decimal.
        assert!(svg.contains(">0.2</text>") && svg.contains(">1.0</text>"), "{svg}");
    }

    #[test]
    fn log_axis_and_degenerate_data() {
        let svg = Plot::new("cdf", "latency (ms)", "fraction")
            .x_log(true)
            .y_range(0.0, 1.0)
            .series(Series::line("edge", vec![(0.5, 0.1), (5.0, 0.5), (500.0, 1.0), (0.0, 0.0)]))
            .to_svg();
        check_well_formed(&svg).unwrap();
        assert!(svg.contains(">1</text>") && svg.contains(">100</text>"), "{svg}");
        // Empty plot and a single point still produce a valid document.
        check_well_formed(&Plot::new("", "", "").to_svg()).unwrap();
        check_well_formed(&Plot::new("one", "x", "y").series(Series::points("p", vec![(3.0, 3.0)])).to_svg()).unwrap();
    }

    #[test]
    fn checker_rejects_broken_documents() {
        assert!(check_well_formed("<svg><g></svg>").is_err());
        assert!(check_well_formed("<svg a=1/>").is_err());
        assert!(check_well_formed("<svg>a & b</svg>").is_err());
        assert!(check_well_formed("<svg/><svg/>").is_err());
        assert!(check_well_formed(r#"<svg a="x"><t>&lt;</t></svg>"#).is_ok());
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(10.0), 10.0);
        assert_eq!(nice_step(0.0), 1.0);
    }
}
