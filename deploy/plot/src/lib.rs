//! SVG line plots drawn with [`plotters`]' SVG backend: line and scatter
//! series on linear or logarithmic axes, with ticks, axis labels, a legend and
//! an optional set of labelled marked points. Text is plain SVG `<text>` (the
//! viewer's sans-serif font), so no font files or font crates are needed.
//!
//! ```
//! use offramp_plot::{Plot, Series};
//! let svg = Plot::new("accuracy vs compute", "relative compute", "accuracy (%)")
//!     .series(Series::line("max-prob", vec![(0.3, 97.0), (0.6, 98.8), (1.0, 99.0)]))
//!     .mark("full network", 1.0, 99.0)
//!     .to_svg();
//! assert!(svg.starts_with("<svg"));
//! offramp_plot::check_well_formed(&svg).unwrap();
//! ```

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, ValueFormatter};
use plotters::drawing::DrawingAreaErrorKind;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

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
    /// A CSS colour (`#rgb`, `#rrggbb` or a name such as `teal`); `None`, or
    /// one that does not parse, takes the next one of the palette.
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

const PALETTE: [u32; 10] =
    [0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22, 0x17becf];
const FONT: f64 = 12.0;
const GRID: RGBColor = RGBColor(0xe0, 0xe0, 0xe0);

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

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
        let mut svg = String::new();
        // Drawing into a string does no I/O and the SVG backend measures no
        // fonts, so this cannot fail; if it did, the backend still closes the
        // open elements when dropped, so the document stays well-formed.
        let drawn = self.draw(&mut svg);
        debug_assert!(drawn.is_ok(), "{drawn:?}");
        tidy_text(&svg)
    }

    fn draw(&self, svg: &mut String) -> DrawResult {
        let size = |v: f64, min: f64| v.clamp(min, 100_000.0) as u32; // NaN clamps to `min`
        let root = SVGBackend::with_string(svg, (size(self.width, 200.0), size(self.height, 150.0)));
        let root = root.into_drawing_area();
        root.fill(&WHITE)?;
        let data: Vec<(f64, f64)> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .chain(self.marks.iter().map(|m| (m.x, m.y)))
            .filter(|&p| self.usable(p))
            .collect();
        let x_axis = Axis::fit(data.iter().map(|p| p.0), self.x_range, self.x_log);
        let y_axis = Axis::fit(data.iter().map(|p| p.1), self.y_range, self.y_log);
        let (xa, ya) = (x_axis.clone(), y_axis.clone());
        // Axis fractions of a usable point, and the point of a pair of fractions.
        let frac = |(x, y): (f64, f64)| (xa.frac(x), ya.frac(y));
        let unfrac = |(fx, fy): (f64, f64)| (xa.value(fx), ya.value(fy));
        let inside = |(fx, fy): (f64, f64)| (0.0..=1.0).contains(&fx) && (0.0..=1.0).contains(&fy);

        let mut chart = ChartBuilder::on(&root)
            .caption(clean(&self.title), ("sans-serif", (FONT + 3.0) * 1.24, FontStyle::Bold))
            .margin(8)
            .margin_right(20)
            .x_label_area_size(46)
            .y_label_area_size(66)
            .build_cartesian_2d(x_axis, y_axis)?;
        chart
            .configure_mesh()
            .x_desc(clean(&self.x_label))
            .y_desc(clean(&self.y_label))
            .label_style(font(FONT))
            .axis_desc_style(font(FONT))
            .bold_line_style(GRID)
            .max_light_lines(0)
            .draw()?;
        // plotters draws the left and bottom axes only: frame the whole area.
        let ((x0, y0), (x1, y1)) = (unfrac((0.0, 0.0)), unfrac((1.0, 1.0)));
        chart.plotting_area().draw(&Rectangle::new([(x0, y0), (x1, y1)], BLACK))?;

        // plotters' SVG output has no clipping (plotters issues #429, #622), so
        // lines are cut at the edges of the area here and dots outside dropped.
        for (i, se) in self.series.iter().enumerate() {
            let color = se.color.as_deref().and_then(parse_color).unwrap_or_else(|| rgb(PALETTE[i % PALETTE.len()]));
            let fracs: Vec<(f64, f64)> = se.points.iter().copied().filter(|&p| self.usable(p)).map(frac).collect();
            let (line, dots) = (se.style != Style::Points, se.style != Style::Line);
            let runs = if line { clip_polyline(&fracs) } else { Vec::new() };
            let runs = runs.into_iter().map(|run| run.into_iter().map(unfrac).collect::<Vec<_>>());
            // The legend glyph: a transparent part is not written at all.
            let shown = |on: bool| if on { color.stroke_width(2) } else { TRANSPARENT.stroke_width(2) };
            let (line_style, dot_style) = (shown(line), if dots { color.filled() } else { TRANSPARENT.filled() });
            chart.draw_series(runs.map(|run| PathElement::new(run, line_style)))?.label(clean(&se.name)).legend(
                move |(x, y)| {
                    EmptyElement::at((x, y))
                        + PathElement::new([(0, 0), (24, 0)], line_style)
                        + Circle::new((12, 0), 3, dot_style)
                },
            );
            if dots {
                let shown = fracs.into_iter().filter(|&f| inside(f)).map(unfrac);
                chart.draw_series(shown.map(|p| Circle::new(p, 3, color.filled())))?;
            }
        }

        let marks = self.marks.iter().filter(|m| self.usable((m.x, m.y)) && inside(frac((m.x, m.y))));
        let diamond = |r: i32| Polygon::new(vec![(0, -r), (r, 0), (0, r), (-r, 0)], BLACK.filled());
        let drawn = chart.draw_series(marks.map(|m| {
            // Labels go left of points in the right half so they stay inside.
            let (dx, anchor) = if xa.frac(m.x) > 0.5 { (-9, HPos::Right) } else { (9, HPos::Left) };
            let outline = PathElement::new([(0, -7), (7, 0), (0, 7), (-7, 0), (0, -7)], WHITE);
            let label = Text::new(clean(&m.label), (dx, -8), font(FONT - 1.0).pos(Pos::new(anchor, VPos::Bottom)));
            EmptyElement::at((m.x, m.y)) + outline + diamond(6) + label
        }))?;
        if !self.marks.is_empty() && !self.marks_name.is_empty() {
            drawn.label(clean(&self.marks_name)).legend(move |(x, y)| EmptyElement::at((x + 12, y)) + diamond(5));
        }

        let entries = self.series.len() + usize::from(!self.marks.is_empty() && !self.marks_name.is_empty());
        let position = match self.legend {
            Legend::TopRight => SeriesLabelPosition::UpperRight,
            Legend::TopLeft => SeriesLabelPosition::UpperLeft,
            Legend::BottomRight => SeriesLabelPosition::LowerRight,
            Legend::BottomLeft => SeriesLabelPosition::LowerLeft,
            Legend::Hidden => return root.present(),
        };
        if entries > 0 {
            chart
                .configure_series_labels()
                .position(position)
                .margin(6)
                .legend_area_size(30)
                .label_font(font(FONT))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(0x99, 0x99, 0x99))
                .draw()?;
        }
        root.present()
    }
}

/// plotters writes `<text ...>\nLABEL\n</text>`: drops those two newlines so
/// that a label reads `>LABEL</text>`, as callers' tests search for.
fn tidy_text(svg: &str) -> String {
    let mut parts = svg.split("<text ");
    let mut out = parts.next().unwrap_or_default().to_string();
    for part in parts {
        // Attribute values are escaped, so the first `>` ends the opening tag.
        let (tag, rest) = part.split_once('>').unwrap_or((part, ""));
        let rest = rest.strip_prefix('\n').unwrap_or(rest);
        let (content, after) = rest.split_once("</text>").unwrap_or((rest, ""));
        out = out + "<text " + tag + ">" + content.strip_suffix('\n').unwrap_or(content) + "</text>" + after;
    }
    out
}

/// A sans-serif font of `px` pixels (plotters' SVG backend writes `size / 1.24`).
fn font(px: f64) -> TextStyle<'static> {
    ("sans-serif", px * 1.24).into()
}

/// Text without the control characters XML does not allow (plotters escapes the rest).
fn clean(text: &str) -> String {
    text.chars().filter(|&c| !c.is_control() || c == '\t' || c == '\n').collect()
}

fn rgb(hex: u32) -> RGBColor {
    RGBColor((hex >> 16) as u8, (hex >> 8) as u8, hex as u8)
}

/// Parses `#rgb`, `#rrggbb` or a CSS colour name.
fn parse_color(color: &str) -> Option<RGBColor> {
    let color = color.trim().to_ascii_lowercase();
    let hex = match color.strip_prefix('#') {
        Some(h) if h.len() == 3 => h.chars().flat_map(|c| [c, c]).collect(),
        Some(h) => h.to_string(),
        None => CSS_COLORS.split_whitespace().skip_while(|&name| name != color).nth(1)?.to_string(),
    };
    (hex.len() == 6).then(|| u32::from_str_radix(&hex, 16).ok().map(rgb)).flatten()
}

/// The CSS named colours, as `name hex` pairs.
const CSS_COLORS: &str =
    "aliceblue f0f8ff antiquewhite faebd7 aqua 00ffff aquamarine 7fffd4 azure f0ffff beige f5f5dc \
    bisque ffe4c4 black 000000 blanchedalmond ffebcd blue 0000ff blueviolet 8a2be2 brown a52a2a burlywood deb887 \
    cadetblue 5f9ea0 chartreuse 7fff00 chocolate d2691e coral ff7f50 cornflowerblue 6495ed cornsilk fff8dc \
    crimson dc143c cyan 00ffff darkblue 00008b darkcyan 008b8b darkgoldenrod b8860b darkgray a9a9a9 \
    darkgreen 006400 darkgrey a9a9a9 darkkhaki bdb76b darkmagenta 8b008b darkolivegreen 556b2f darkorange ff8c00 \
    darkorchid 9932cc darkred 8b0000 darksalmon e9967a darkseagreen 8fbc8f darkslateblue 483d8b \
    darkslategray 2f4f4f darkslategrey 2f4f4f darkturquoise 00ced1 darkviolet 9400d3 deeppink ff1493 \
    deepskyblue 00bfff dimgray 696969 dimgrey 696969 dodgerblue 1e90ff firebrick b22222 floralwhite fffaf0 \
    forestgreen 228b22 fuchsia ff00ff gainsboro dcdcdc ghostwhite f8f8ff gold ffd700 goldenrod daa520 \
    gray 808080 green 008000 greenyellow adff2f grey 808080 honeydew f0fff0 hotpink ff69b4 indianred cd5c5c \
    indigo 4b0082 ivory fffff0 khaki f0e68c lavender e6e6fa lavenderblush fff0f5 lawngreen 7cfc00 \
    lemonchiffon fffacd lightblue add8e6 lightcoral f08080 lightcyan e0ffff lightgoldenrodyellow fafad2 \
    lightgray d3d3d3 lightgreen 90ee90 lightgrey d3d3d3 lightpink ffb6c1 lightsalmon ffa07a lightseagreen 20b2aa \
    lightskyblue 87cefa lightslategray 778899 lightslategrey 778899 lightsteelblue b0c4de lightyellow ffffe0 \
    lime 00ff00 limegreen 32cd32 linen faf0e6 magenta ff00ff maroon 800000 mediumaquamarine 66cdaa \
    mediumblue 0000cd mediumorchid ba55d3 mediumpurple 9370db mediumseagreen 3cb371 mediumslateblue 7b68ee \
    mediumspringgreen 00fa9a mediumturquoise 48d1cc mediumvioletred c71585 midnightblue 191970 mintcream f5fffa \
    mistyrose ffe4e1 moccasin ffe4b5 navajowhite ffdead navy 000080 oldlace fdf5e6 olive 808000 olivedrab 6b8e23 \
    orange ffa500 orangered ff4500 orchid da70d6 palegoldenrod eee8aa palegreen 98fb98 paleturquoise afeeee \
    palevioletred db7093 papayawhip ffefd5 peachpuff ffdab9 peru cd853f pink ffc0cb plum dda0dd powderblue b0e0e6 \
    purple 800080 rebeccapurple 663399 red ff0000 rosybrown bc8f8f royalblue 4169e1 saddlebrown 8b4513 \
    salmon fa8072 sandybrown f4a460 seagreen 2e8b57 seashell fff5ee sienna a0522d silver c0c0c0 skyblue 87ceeb \
    slateblue 6a5acd slategray 708090 slategrey 708090 snow fffafa springgreen 00ff7f steelblue 4682b4 tan d2b48c \
    teal 008080 thistle d8bfd8 tomato ff6347 turquoise 40e0d0 violet ee82ee wheat f5deb3 white ffffff \
    whitesmoke f5f5f5 yellow ffff00 yellowgreen 9acd32";

/// A point in axis fractions.
type Frac = (f64, f64);

/// Cuts a polyline in axis fractions into the runs inside the unit square.
fn clip_polyline(points: &[Frac]) -> Vec<Vec<Frac>> {
    let mut runs: Vec<Vec<Frac>> = Vec::new();
    let mut open = false;
    for pair in points.windows(2) {
        let Some((a, b, entered, left)) = clip_segment(pair[0], pair[1]) else {
            open = false;
            continue;
        };
        match runs.last_mut() {
            Some(run) if open && !entered => run.push(b),
            _ => runs.push(vec![a, b]),
        }
        open = !left;
    }
    runs
}

/// Liang–Barsky: the part of segment `p`–`q` inside the unit square, and
/// whether it starts after `p` (entered) and ends before `q` (left).
fn clip_segment(p: Frac, q: Frac) -> Option<(Frac, Frac, bool, bool)> {
    let (dx, dy) = (q.0 - p.0, q.1 - p.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (step, room) in [(-dx, p.0), (dx, 1.0 - p.0), (-dy, p.1), (dy, 1.0 - p.1)] {
        if step == 0.0 {
            if room < 0.0 {
                return None;
            }
        } else if step < 0.0 {
            t0 = t0.max(room / step);
        } else {
            t1 = t1.min(room / step);
        }
    }
    let at = |t: f64| (p.0 + t * dx, p.1 + t * dy);
    (t0 <= t1).then(|| (at(t0), at(t1), t0 > 0.0, t1 < 1.0))
}

/// An axis: its range (in log10 units on a log axis) and tick positions (data
/// units). It is the plotters coordinate of both directions.
#[derive(Debug, Clone)]
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

    /// The data value at position `frac` along the axis.
    fn value(&self, frac: f64) -> f64 {
        let v = self.lo + frac * (self.hi - self.lo);
        if self.log {
            10f64.powf(v)
        } else {
            v
        }
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

impl Ranged for Axis {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (from, to): (i32, i32)) -> i32 {
        (f64::from(from) + self.frac(*value) * f64::from(to - from)).round() as i32
    }

    /// The ticks, as bold grid lines; there are no light ones.
    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        if hint.max_num_points() == 0 {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.value(0.0)..self.value(1.0)
    }
}

impl ValueFormatter<f64> for Axis {
    fn format_ext(&self, value: &f64) -> String {
        self.label(*value)
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

/// Why [`check_well_formed`] rejected a document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvgError {
    #[error("unterminated tag")]
    UnterminatedTag,
    #[error("</{0}> without an open element")]
    UnopenedClose(String),
    #[error("</{close}> closes <{open}>")]
    MismatchedClose { close: String, open: String },
    #[error("bad element name in <{0}>")]
    BadElementName(String),
    #[error("<{0}> never closed")]
    NeverClosed(String),
    #[error("{0} root elements")]
    RootCount(usize),
    #[error("bare & in {0:?}")]
    BareAmpersand(String),
    #[error("unknown entity {0}")]
    UnknownEntity(String),
    #[error("attribute without value: {0:?}")]
    AttributeWithoutValue(String),
    #[error("bad attribute name {0:?}")]
    BadAttributeName(String),
    #[error("unquoted attribute")]
    UnquotedAttribute,
    #[error("unterminated attribute value")]
    UnterminatedAttribute,
    #[error("< in attribute {0}")]
    LtInAttribute(String),
}

/// Checks that `svg` is well-formed XML as far as tags go: every element
/// closed in order, attributes quoted, no stray `<` or `&`. Used by tests here
/// and by other commands' tests.
pub fn check_well_formed(svg: &str) -> Result<(), SvgError> {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = svg;
    let mut roots = 0;
    while let Some(open) = rest.find('<') {
        check_text(&rest[..open])?;
        let after = &rest[open + 1..];
        let close = after.find('>').ok_or(SvgError::UnterminatedTag)?;
        let tag = &after[..close];
        rest = &after[close + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            let top = stack.pop().ok_or_else(|| SvgError::UnopenedClose(name.into()))?;
            if top != name.trim() {
                return Err(SvgError::MismatchedClose { close: name.into(), open: top });
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let body = tag.trim_end_matches('/');
        let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_:".contains(c)) {
            return Err(SvgError::BadElementName(tag.into()));
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
    if let Some(open) = stack.pop() {
        return Err(SvgError::NeverClosed(open));
    }
    if roots != 1 {
        return Err(SvgError::RootCount(roots));
    }
    Ok(())
}

fn check_text(text: &str) -> Result<(), SvgError> {
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        let entity = &rest[i..];
        let end = entity.find(';').ok_or_else(|| SvgError::BareAmpersand(text.into()))?;
        if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&&entity[..=end]) {
            return Err(SvgError::UnknownEntity(entity[..=end].into()));
        }
        rest = &entity[end + 1..];
    }
    Ok(())
}

fn check_attributes(mut attrs: &str) -> Result<(), SvgError> {
    loop {
        attrs = attrs.trim_start();
        if attrs.is_empty() {
            return Ok(());
        }
        let eq = attrs.find('=').ok_or_else(|| SvgError::AttributeWithoutValue(attrs.into()))?;
        let name = attrs[..eq].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_:".contains(c)) {
            return Err(SvgError::BadAttributeName(name.into()));
        }
        let value = &attrs[eq + 1..];
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'').ok_or(SvgError::UnquotedAttribute)?;
        let end = value[1..].find(quote).ok_or(SvgError::UnterminatedAttribute)?;
        let v = &value[1..1 + end];
        if v.contains('<') {
            return Err(SvgError::LtInAttribute(name.into()));
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

    /// The trimmed contents of every `<text>` element.
    fn texts(svg: &str) -> Vec<&str> {
        svg.split("<text").skip(1).filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim())).collect()
    }

    /// The elements `<tag ...>` whose attributes include `attr`.
    fn elements<'a>(svg: &'a str, tag: &str, attr: &str) -> Vec<&'a str> {
        svg.split(&format!("<{tag} "))
            .skip(1)
            .filter_map(|e| e.split_once('>'))
            .map(|e| e.0)
            .filter(|e| e.contains(attr))
            .collect()
    }

    /// An attribute's number.
    fn num(element: &str, attr: &str) -> f64 {
        format!(" {element}").split(&format!(" {attr}=\"")).nth(1).unwrap().split('"').next().unwrap().parse().unwrap()
    }

    /// The vertices of a `<polyline>`.
    fn vertices(element: &str) -> Vec<(f64, f64)> {
        let points = element.split("points=\"").nth(1).unwrap().split('"').next().unwrap();
        let xy = |p: &str| p.split_once(',').map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap()));
        points.split_whitespace().map(|p| xy(p).unwrap()).collect()
    }

    /// The plot area's frame: `(left, top, right, bottom)`.
    fn frame(svg: &str) -> (f64, f64, f64, f64) {
        let rect = elements(svg, "rect", r##"fill="none" stroke="#000000""##);
        assert_eq!(rect.len(), 1, "{svg}");
        let (x, y) = (num(rect[0], "x"), num(rect[0], "y"));
        (x, y, x + num(rect[0], "width"), y + num(rect[0], "height"))
    }

    #[test]
    fn writes_well_formed_svg_with_every_series() {
        let svg = sample().to_svg();
        check_well_formed(&svg).unwrap();
        assert!(svg.starts_with("<svg ") && svg.contains(r#"xmlns="http://www.w3.org/2000/svg""#));
        let texts = texts(&svg);
        // The title, the axis labels, every legend entry and mark label, escaped.
        for text in [
            "Accuracy &lt;vs&gt; compute &amp; more",
            "relative compute",
            "accuracy (%)",
            "max-prob",
            "exits &quot;forced&quot;",
            "entropy",
            "policy",
            "full network",
            "marked",
        ] {
            assert!(svg.contains(&format!(">{text}</text>")), "{text} not a whole <text> in {svg}");
            assert_eq!(texts.iter().filter(|t| **t == text).count(), 1, "{text} missing in {texts:?}");
        }
        // Ticks on a 0.1..1.0 x range include 0.2 and 1.0 labelled with one decimal.
        assert!(texts.contains(&"0.2") && texts.contains(&"1.0"), "{texts:?}");
        assert!(texts.contains(&"90") && texts.contains(&"98"), "{texts:?}");
        // Lines: the first palette colour and the named "teal", each also in the legend.
        let (blue, teal) = (elements(&svg, "polyline", "#1F77B4"), elements(&svg, "polyline", "#008080"));
        assert_eq!((blue.len(), teal.len()), (2, 2), "{svg}");
        // The NaN point is skipped: three vertices, rising left to right, inside the frame.
        let line = vertices(blue[0]);
        assert_eq!(line.len(), 3, "{line:?}");
        assert!(line.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 > w[1].1), "{line:?}");
        let (left, top, right, bottom) = frame(&svg);
        assert!(line.iter().all(|&(x, y)| (left..=right).contains(&x) && (top..=bottom).contains(&y)));
        // Dots: 2 + 2 points plus the legend dots of the two point series.
        assert_eq!(elements(&svg, "circle", "#FF7F0E").len(), 3);
        assert_eq!(elements(&svg, "circle", "#008080").len(), 3);
        // Two mark diamonds plus the legend's.
        assert_eq!(elements(&svg, "polygon", "#000000").len(), 3);
    }

    #[test]
    fn log_axis_and_degenerate_data() {
        let svg = Plot::new("cdf", "latency (ms)", "fraction")
            .x_log(true)
            .y_range(0.0, 1.0)
            .series(Series::line("edge", vec![(0.5, 0.1), (5.0, 0.5), (500.0, 1.0), (0.0, 0.0)]))
            .to_svg();
        check_well_formed(&svg).unwrap();
        let texts = texts(&svg);
        assert!(texts.contains(&"1") && texts.contains(&"100"), "{texts:?}");
        // Decades are evenly spaced, and x = 0 is left out rather than drawn at -inf.
        let line = vertices(elements(&svg, "polyline", "#1F77B4")[0]);
        assert_eq!(line.len(), 3, "{line:?}");
        let (d1, d2) = (line[1].0 - line[0].0, line[2].0 - line[1].0);
        assert!((d2 - 2.0 * d1).abs() <= 2.0, "{line:?}");
        // Empty plot and a single point still produce a valid document.
        for plot in [
            Plot::new("", "", ""),
            Plot::new("one", "x", "y").series(Series::points("p", vec![(3.0, 3.0)])),
            Plot::new("none", "x", "y").series(Series::line("empty", vec![])).mark("m", f64::NAN, 1.0).marks_name("m"),
            Plot::new("tiny", "x", "y").size(0.0, f64::NAN).legend(Legend::Hidden),
        ] {
            let svg = plot.to_svg();
            check_well_formed(&svg).unwrap();
            assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        }
    }

    #[test]
    fn log_axes_take_only_positive_data() {
        let svg = Plot::new("both log", "x", "y")
            .x_log(true)
            .y_log(true)
            .x_range(-1.0, 10.0) // not usable on a log axis: fitted instead
            .series(Series::line_points("s", vec![(-1.0, 5.0), (0.0, 1.0), (1.0, 0.0), (1.0, 1.0), (100.0, 1e4)]))
            .mark("negative", -3.0, -3.0)
            .mark("zero", 0.0, 10.0)
            .to_svg();
        check_well_formed(&svg).unwrap();
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        // Only (1, 1) and (100, 1e4) are drawn; the marks are left out.
        assert_eq!(vertices(elements(&svg, "polyline", "#1F77B4")[0]).len(), 2);
        assert_eq!(elements(&svg, "circle", "#1F77B4").len(), 2 + 1);
        assert!(!texts(&svg).contains(&"negative") && !texts(&svg).contains(&"zero"));
        assert!(texts(&svg).contains(&"10000"), "{:?}", texts(&svg));
    }

    #[test]
    fn fixed_ranges_clip_lines_at_the_frame() {
        let svg = Plot::new("clipped", "x", "y")
            .x_range(0.0, 1.0)
            .y_range(0.0, 1.0)
            .series(Series::line_points(
                "in and out",
                vec![(-1.0, 0.5), (0.5, 0.5), (0.5, 2.0), (0.8, 0.2), (2.0, 0.2)],
            ))
            .legend(Legend::TopLeft)
            .to_svg();
        check_well_formed(&svg).unwrap();
        let (left, top, right, bottom) = frame(&svg);
        let lines = elements(&svg, "polyline", "#1F77B4");
        // Two runs cut at the top edge, plus the legend's line (top left, inside the frame).
        assert_eq!(lines.len(), 3, "{svg}");
        let (a, b) = (vertices(lines[0]), vertices(lines[1]));
        assert_eq!((a.len(), b.len()), (3, 3), "{a:?} {b:?}");
        assert!((a[0].0 - left).abs() <= 1.0 && (a[2].1 - top).abs() <= 1.0, "{a:?}");
        assert!((b[0].1 - top).abs() <= 1.0 && (b[2].0 - right).abs() <= 1.0, "{b:?}");
        for &(x, y) in a.iter().chain(&b).chain(&vertices(lines[2])) {
            assert!((left..=right).contains(&x) && (top..=bottom).contains(&y), "{x},{y} outside");
        }
        // Dots outside the ranges are dropped: (0.5, 0.5) and (0.8, 0.2), plus the legend's.
        assert_eq!(elements(&svg, "circle", "#1F77B4").len(), 3);
    }

    #[test]
    fn legend_placement_and_colours() {
        let plot = || Plot::new("t", "x", "y").series(Series::line("only", vec![(0.0, 0.0), (1.0, 1.0)]));
        let legend_box = |svg: &str| {
            let rect = elements(svg, "rect", r##"stroke="#999999""##);
            assert_eq!(rect.len(), 1, "{svg}");
            (num(rect[0], "x"), num(rect[0], "y"))
        };
        let (left, top, right, bottom) = frame(&plot().to_svg());
        let (mid_x, mid_y) = ((left + right) / 2.0, (top + bottom) / 2.0);
        let (x, y) = legend_box(&plot().to_svg());
        assert!(x > mid_x && y < mid_y, "default is top right");
        let (x, y) = legend_box(&plot().legend(Legend::BottomLeft).to_svg());
        assert!(x < mid_x && y > mid_y, "bottom left");
        assert!(elements(&plot().legend(Legend::Hidden).to_svg(), "rect", "#999999").is_empty());
        assert!(!texts(&plot().legend(Legend::Hidden).to_svg()).contains(&"only"));
        // Colours: hex, short hex, names; an unknown one falls back to the palette.
        assert_eq!(parse_color("#1f77b4"), Some(RGBColor(0x1f, 0x77, 0xb4)));
        assert_eq!(parse_color("#f80"), Some(RGBColor(0xff, 0x88, 0x00)));
        assert_eq!(parse_color("CornflowerBlue"), Some(RGBColor(0x64, 0x95, 0xed)));
        assert_eq!(parse_color("no-such-colour"), None);
        assert_eq!(parse_color("#12345"), None);
        let svg = plot().series(Series::line("odd", vec![(0.0, 1.0), (1.0, 0.0)]).color("bogus")).to_svg();
        assert_eq!(elements(&svg, "polyline", "#FF7F0E").len(), 2, "second palette colour");
    }

    #[test]
    fn checker_rejects_broken_documents() {
        assert_eq!(
            check_well_formed("<svg><g></svg>"),
            Err(SvgError::MismatchedClose { close: "svg".into(), open: "g".into() })
        );
        assert_eq!(check_well_formed("<svg a=1/>"), Err(SvgError::UnquotedAttribute));
        assert!(matches!(check_well_formed("<svg>a & b</svg>"), Err(SvgError::BareAmpersand(_))));
        assert_eq!(check_well_formed("<svg/><svg/>"), Err(SvgError::RootCount(2)));
        assert_eq!(check_well_formed("<svg>").unwrap_err().to_string(), "<svg> never closed");
        assert!(check_well_formed(r#"<svg a="x"><t>&lt;</t></svg>"#).is_ok());
    }

    #[test]
    fn nice_steps() {
        assert_eq!(nice_step(0.13), 0.2);
        assert_eq!(nice_step(3.0), 5.0);
        assert_eq!(nice_step(10.0), 10.0);
        assert_eq!(nice_step(0.0), 1.0);
    }

    #[test]
    fn clips_segments() {
        assert_eq!(clip_polyline(&[(0.5, 0.5), (0.6, 0.6)]), vec![vec![(0.5, 0.5), (0.6, 0.6)]]);
        assert!(clip_polyline(&[(2.0, 2.0), (3.0, 3.0)]).is_empty());
        assert_eq!(clip_polyline(&[(-1.0, 0.5), (0.5, 0.5)]), vec![vec![(0.0, 0.5), (0.5, 0.5)]]);
        // Out and back in: two runs.
        assert_eq!(clip_polyline(&[(0.2, 0.5), (0.2, 1.5), (0.4, 0.5)]).len(), 2);
        assert!(clip_polyline(&[(0.5, 0.5)]).is_empty());
    }
}
