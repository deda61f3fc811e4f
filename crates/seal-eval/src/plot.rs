//! Minimal SVG plots for reports: grouped histograms (e.g. ranker scores by
//! label) and line plots (e.g. training curves). The SVG is written by hand
//! (no plotting dependency); bars and lines carry `data-*` attributes
//! (`data-group`, `data-bin`, `data-count`, `data-series`) so tools and tests
//! can read the plotted numbers back.

use std::fmt::Write;

use crate::error::{EvalError, Result};

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 400.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 52.0;
const PALETTE: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Titles of a plot.
#[derive(Debug, Clone, Default)]
pub struct PlotText {
    /// The title above the plot.
    pub title: String,
    /// The x-axis label.
    pub x_label: String,
    /// The y-axis label.
    pub y_label: String,
}

impl PlotText {
    /// Titles from string slices.
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
        }
    }
}

/// Escapes text for SVG content and attribute values.
pub fn escape_xml(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// About `target` evenly spaced "nice" tick values (steps of 1, 2 or 5
/// times a power of ten) covering `[lo, hi]`, and the step.
pub fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let span = (hi - lo).abs().max(f64::MIN_POSITIVE);
    let raw = span / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil();
    let last = (hi / step).floor();
    let ticks = (0..=((last - first).max(0.0) as usize))
        .map(|i| (first + i as f64) * step)
        .collect();
    (ticks, step)
}

fn fmt_tick(v: f64, step: f64) -> String {
    let decimals = (-step.log10().floor()).clamp(0.0, 6.0) as usize;
    let v = if v.abs() < step * 1e-9 { 0.0 } else { v };
    format!("{v:.decimals$}")
}

struct Frame {
    x: (f64, f64),
    y: (f64, f64),
}

impl Frame {
    fn px(&self, v: f64) -> f64 {
        LEFT + (v - self.x.0) / (self.x.1 - self.x.0) * (WIDTH - LEFT - RIGHT)
    }
    fn py(&self, v: f64) -> f64 {
        HEIGHT - BOTTOM - (v - self.y.0) / (self.y.1 - self.y.0) * (HEIGHT - TOP - BOTTOM)
    }
}

fn header(out: &mut String, text: &PlotText) {
    let _ = write!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">{}</text>\n",
        WIDTH / 2.0,
        escape_xml(&text.title)
    );
}

/// The frame, y ticks with grid lines and both axis labels; x ticks only for
/// a numeric x axis (`x_ticks`).
fn axes(out: &mut String, frame: &Frame, text: &PlotText, x_ticks: bool) {
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let (y0, y1) = (HEIGHT - BOTTOM, TOP);
    let _ = writeln!(
        out,
        "<path d=\"M{x0},{y1} L{x0},{y0} L{x1},{y0}\" fill=\"none\" stroke=\"black\"/>"
    );
    let (xt, xs) = nice_ticks(frame.x.0, frame.x.1, 6);
    for t in xt.into_iter().filter(|_| x_ticks) {
        let x = frame.px(t);
        let _ = writeln!(
            out,
            "<line x1=\"{x:.2}\" y1=\"{y0}\" x2=\"{x:.2}\" y2=\"{}\" stroke=\"black\"/>\
             <text x=\"{x:.2}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            y0 + 5.0,
            y0 + 18.0,
            fmt_tick(t, xs)
        );
    }
    let (yt, ys) = nice_ticks(frame.y.0, frame.y.1, 5);
    for t in yt {
        let y = frame.py(t);
        let _ = writeln!(
            out,
            "<line x1=\"{}\" y1=\"{y:.2}\" x2=\"{x0}\" y2=\"{y:.2}\" stroke=\"black\"/>\
             <line x1=\"{x0}\" y1=\"{y:.2}\" x2=\"{x1}\" y2=\"{y:.2}\" stroke=\"#e0e0e0\"/>\
             <text x=\"{}\" y=\"{:.2}\" text-anchor=\"end\">{}</text>",
            x0 - 5.0,
            x0 - 8.0,
            y + 4.0,
            fmt_tick(t, ys)
        );
    }
    let _ = writeln!(
        out,
        "<text x=\"{:.2}\" y=\"{}\" text-anchor=\"middle\">{}</text>\n\
         <text x=\"16\" y=\"{:.2}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {:.2})\">{}</text>",
        (x0 + x1) / 2.0,
        HEIGHT - 12.0,
        escape_xml(&text.x_label),
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape_xml(&text.y_label)
    );
}

fn legend(out: &mut String, names: &[&str]) {
    for (i, name) in names.iter().enumerate() {
        let y = TOP + 8.0 + 16.0 * i as f64;
        let x = WIDTH - RIGHT - 150.0;
        let _ = writeln!(
            out,
            "<rect x=\"{x}\" y=\"{}\" width=\"12\" height=\"12\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>",
            y - 10.0,
            PALETTE[i % PALETTE.len()],
            x + 18.0,
            y,
            escape_xml(name)
        );
    }
}

fn check_values(what: &str, values: &[f64]) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(EvalError::invalid(
            what,
            format!("value #{i} is {} (plots need finite values)", values[i]),
        )),
        None => Ok(()),
    }
}

/// A histogram of several groups over shared bins, drawn side by side in
/// each bin. With `normalize`, bar heights are the share of the group's
/// values in the bin (groups of different sizes compare); otherwise counts.
/// Values must be finite; groups may be empty (they still get a legend).
pub fn histogram_svg(
    text: &PlotText,
    groups: &[(&str, &[f64])],
    bins: usize,
    normalize: bool,
) -> Result<String> {
    if bins == 0 {
        return Err(EvalError::invalid(
            "histogram bins",
            "0 (must be at least 1)",
        ));
    }
    if groups.is_empty() {
        return Err(EvalError::invalid("histogram", "no groups to plot"));
    }
    for (name, values) in groups {
        check_values(&format!("histogram group `{name}`"), values)?;
    }
    let all = groups.iter().flat_map(|(_, v)| v.iter().copied());
    let (mut lo, mut hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if lo > hi {
        (lo, hi) = (0.0, 1.0);
    } else if lo == hi {
        (lo, hi) = (lo - 0.5, hi + 0.5);
    }
    let width = (hi - lo) / bins as f64;
    let counts: Vec<Vec<usize>> = groups
        .iter()
        .map(|(_, values)| {
            let mut c = vec![0usize; bins];
            for &v in values.iter() {
                let b = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
                c[b] += 1;
            }
            c
        })
        .collect();
    let heights: Vec<Vec<f64>> = counts
        .iter()
        .zip(groups)
        .map(|(c, (_, values))| {
            c.iter()
                .map(|&k| {
                    if normalize {
                        k as f64 / values.len().max(1) as f64
                    } else {
                        k as f64
                    }
                })
                .collect()
        })
        .collect();
    let ymax = heights.iter().flatten().copied().fold(0.0, f64::max);
    let frame = Frame {
        x: (lo, hi),
        y: (0.0, if ymax > 0.0 { ymax * 1.1 } else { 1.0 }),
    };
    let mut out = String::new();
    header(&mut out, text);
    let g = groups.len() as f64;
    for (gi, (c, h)) in counts.iter().zip(&heights).enumerate() {
        for (bi, (&k, &hv)) in c.iter().zip(h).enumerate() {
            if k == 0 {
                continue;
            }
            let x0 = frame.px(lo + bi as f64 * width);
            let x1 = frame.px(lo + (bi + 1) as f64 * width);
            let w = (x1 - x0) / g;
            let y = frame.py(hv);
            let _ = writeln!(
                out,
                "<rect class=\"bar\" data-group=\"{}\" data-bin=\"{bi}\" data-count=\"{k}\" \
                 x=\"{:.2}\" y=\"{y:.2}\" width=\"{:.2}\" height=\"{:.2}\" fill=\"{}\" \
                 fill-opacity=\"0.8\"/>",
                escape_xml(groups[gi].0),
                x0 + w * gi as f64,
                (w - 0.5).max(0.5),
                (HEIGHT - BOTTOM - y).max(0.0),
                PALETTE[gi % PALETTE.len()]
            );
        }
    }
    axes(&mut out, &frame, text, true);
    let names: Vec<String> = groups
        .iter()
        .map(|(n, v)| format!("{n} (n={})", v.len()))
        .collect();
    legend(
        &mut out,
        &names.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    out.push_str("</svg>\n");
    Ok(out)
}

/// A line plot of several `(x, y)` series (e.g. loss per step). Non-finite
/// points break a line; a series needs at least one finite point overall.
pub fn line_plot_svg(text: &PlotText, series: &[(&str, &[(f64, f64)])]) -> Result<String> {
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, s)| s.iter().filter(finite).copied())
        .collect();
    if pts.is_empty() {
        return Err(EvalError::invalid("line plot", "no finite points to plot"));
    }
    let range = |f: fn(&(f64, f64)) -> f64| {
        let (lo, hi) = pts
            .iter()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
                (a.min(v), b.max(v))
            });
        if lo == hi {
            (lo - 0.5, hi + 0.5)
        } else {
            let pad = (hi - lo) * 0.05;
            (lo - pad, hi + pad)
        }
    };
    let frame = Frame {
        x: range(|p| p.0),
        y: range(|p| p.1),
    };
    let mut out = String::new();
    header(&mut out, text);
    axes(&mut out, &frame, text, true);
    for (si, (name, s)) in series.iter().enumerate() {
        let mut d = String::new();
        let mut pen_down = false;
        for p in s.iter() {
            if !finite(&p) {
                pen_down = false;
                continue;
            }
            let cmd = if pen_down { 'L' } else { 'M' };
            let _ = write!(d, "{cmd}{:.2},{:.2} ", frame.px(p.0), frame.py(p.1));
            pen_down = true;
        }
        let _ = writeln!(
            out,
            "<path class=\"series\" data-series=\"{}\" d=\"{}\" fill=\"none\" stroke=\"{}\" \
             stroke-width=\"1.8\"/>",
            escape_xml(name),
            d.trim_end(),
            PALETTE[si % PALETTE.len()]
        );
    }
    legend(
        &mut out,
        &series.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
    );
    out.push_str("</svg>\n");
    Ok(out)
}

/// One estimate with its interval, for [`interval_plot_svg`].
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// The category it belongs to (a method's name).
    pub category: String,
    /// The point estimate.
    pub value: f64,
    /// Lower end of the interval.
    pub low: f64,
    /// Upper end of the interval.
    pub high: f64,
}

/// Point estimates with interval whiskers over named categories (methods
/// along the x axis), one colour per series, on a fixed y range with a
/// dashed reference line (e.g. a win rate of ½). Values must be finite,
/// each inside its interval and the interval inside `y_range`; anything
/// else is an error naming the category.
pub fn interval_plot_svg(
    text: &PlotText,
    series: &[(&str, &[Estimate])],
    y_range: (f64, f64),
    reference: Option<f64>,
) -> Result<String> {
    let mut categories: Vec<&str> = Vec::new();
    for (_, s) in series {
        for e in s.iter() {
            check_values(
                &format!("interval plot `{}`", e.category),
                &[e.value, e.low, e.high],
            )?;
            if !(e.low <= e.value && e.value <= e.high) {
                return Err(EvalError::invalid(
                    "interval plot",
                    format!(
                        "`{}`: {} is not inside [{}, {}]",
                        e.category, e.value, e.low, e.high
                    ),
                ));
            }
            if e.low < y_range.0 || e.high > y_range.1 {
                return Err(EvalError::invalid(
                    "interval plot",
                    format!(
                        "`{}`: [{}, {}] is outside the plot's range {:?}",
                        e.category, e.low, e.high, y_range
                    ),
                ));
            }
            if !categories.contains(&e.category.as_str()) {
                categories.push(&e.category);
            }
        }
    }
    if categories.is_empty() || y_range.0.partial_cmp(&y_range.1) != Some(std::cmp::Ordering::Less)
    {
        return Err(EvalError::invalid(
            "interval plot",
            "no estimates, or an empty y range",
        ));
    }
    let frame = Frame {
        x: (0.0, categories.len() as f64),
        y: y_range,
    };
    let mut out = String::new();
    header(&mut out, text);
    axes(&mut out, &frame, text, false);
    let (x0, x1) = (LEFT, WIDTH - RIGHT);
    let y0 = HEIGHT - BOTTOM;
    for (i, c) in categories.iter().enumerate() {
        let _ = writeln!(
            out,
            "<text x=\"{:.2}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            frame.px(i as f64 + 0.5),
            y0 + 18.0,
            escape_xml(c)
        );
    }
    if let Some(r) = reference {
        let y = frame.py(r);
        let _ = writeln!(
            out,
            "<line class=\"reference\" x1=\"{x0}\" y1=\"{y:.2}\" x2=\"{x1}\" y2=\"{y:.2}\" \
             stroke=\"#555\" stroke-dasharray=\"5,4\"/>"
        );
    }
    let width = 0.6 / series.len().max(1) as f64;
    for (si, (name, s)) in series.iter().enumerate() {
        let colour = PALETTE[si % PALETTE.len()];
        for e in s.iter() {
            let i = categories
                .iter()
                .position(|c| *c == e.category)
                .unwrap_or(0);
            let x = frame.px(i as f64 + 0.2 + width * (si as f64 + 0.5));
            let _ = writeln!(
                out,
                "<g class=\"estimate\" data-series=\"{}\" data-category=\"{}\">\
                 <line x1=\"{x:.2}\" y1=\"{:.2}\" x2=\"{x:.2}\" y2=\"{:.2}\" stroke=\"{colour}\" stroke-width=\"1.8\"/>\
                 <circle cx=\"{x:.2}\" cy=\"{:.2}\" r=\"4\" fill=\"{colour}\"/></g>",
                escape_xml(name),
                escape_xml(&e.category),
                frame.py(e.low),
                frame.py(e.high),
                frame.py(e.value)
            );
        }
    }
    legend(
        &mut out,
        &series.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
    );
    out.push_str("</svg>\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr_values(svg: &str, attr: &str) -> Vec<String> {
        let key = format!("{attr}=\"");
        svg.match_indices(&key)
            .map(|(i, _)| {
                let rest = &svg[i + key.len()..];
                rest[..rest.find('"').unwrap_or(0)].to_string()
            })
            .collect()
    }

    #[test]
    fn histogram_counts_every_value_once() {
        let benign = [0.1, 0.2, 0.25, 0.9, 1.0];
        let harmful = [-1.0, -0.9, 0.2];
        let svg = histogram_svg(
            &PlotText::new("scores <by> label", "score", "share"),
            &[("benign", &benign), ("harmful", &harmful)],
            10,
            true,
        )
        .unwrap();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("scores &lt;by&gt; label"));
        let groups = attr_values(&svg, "data-group");
        let counts: Vec<usize> = attr_values(&svg, "data-count")
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        let total = |g: &str| -> usize {
            groups
                .iter()
                .zip(&counts)
                .filter(|(n, _)| n.as_str() == g)
                .map(|(_, c)| c)
                .sum()
        };
        assert_eq!(total("benign"), 5);
        assert_eq!(total("harmful"), 3);
        // min and max land in the first and last bins
        let bins = attr_values(&svg, "data-bin");
        assert!(bins.contains(&"0".to_string()) && bins.contains(&"9".to_string()));
        assert!(histogram_svg(&PlotText::default(), &[("x", &[f64::NAN])], 5, false).is_err());
        assert!(histogram_svg(&PlotText::default(), &[("x", &[1.0])], 0, false).is_err());
        // a single repeated value still plots
        let one = histogram_svg(&PlotText::default(), &[("x", &[2.0, 2.0])], 3, false).unwrap();
        assert_eq!(attr_values(&one, "data-count"), ["2"]);
    }

    #[test]
    fn line_plot_breaks_at_nan_and_maps_monotonically() {
        let a = [(0.0, 1.0), (1.0, 0.5), (2.0, f64::NAN), (3.0, 0.25)];
        let b = [(0.0, 2.0), (3.0, 0.0)];
        let svg = line_plot_svg(
            &PlotText::new("loss", "step", "nll"),
            &[("train", &a), ("val", &b)],
        )
        .unwrap();
        let series_lines: String = svg
            .lines()
            .filter(|l| l.contains("class=\"series\""))
            .collect::<Vec<_>>()
            .join("\n");
        let paths = attr_values(&series_lines, " d");
        let series: Vec<&String> = paths.iter().collect();
        assert_eq!(series.len(), 2);
        // train: M, L, (break) M
        assert_eq!(series[0].matches('M').count(), 2);
        assert_eq!(series[0].matches('L').count(), 1);
        let xs: Vec<f64> = series[1]
            .split(['M', 'L', ' '])
            .filter(|s| !s.is_empty())
            .map(|p| p.split(',').next().unwrap().parse().unwrap())
            .collect();
        assert!(xs[0] < xs[1] && xs[0] >= LEFT && xs[1] <= WIDTH - RIGHT);
        assert!(line_plot_svg(&PlotText::default(), &[("x", &[(f64::NAN, 1.0)])]).is_err());
    }

    #[test]
    fn ticks_are_nice() {
        let (t, s) = nice_ticks(0.0, 1.0, 5);
        assert_eq!(s, 0.2);
        assert_eq!(t.len(), 6);
        let (t, s) = nice_ticks(-3.2, 7.9, 6);
        assert_eq!(s, 2.0);
        assert_eq!(t.first().copied(), Some(-2.0));
        assert_eq!(fmt_tick(0.30000000000000004, 0.1), "0.3");
    }

    #[test]
    fn interval_plot_places_every_estimate_and_refuses_bad_ones() {
        let e = |c: &str, v, l, h| Estimate {
            category: c.into(),
            value: v,
            low: l,
            high: h,
        };
        let safety = [e("seal", 0.7, 0.6, 0.8), e("random", 0.5, 0.4, 0.6)];
        let benign = [e("seal", 0.55, 0.45, 0.65)];
        let svg = interval_plot_svg(
            &PlotText::new("Win rate", "method", "win rate"),
            &[("safety", &safety), ("benign", &benign)],
            (0.0, 1.0),
            Some(0.5),
        )
        .unwrap();
        assert_eq!(svg.matches("class=\"estimate\"").count(), 3);
        assert_eq!(svg.matches("class=\"reference\"").count(), 1);
        // Higher values sit higher (smaller y).
        let cy = attr_values(&svg, "cy");
        let y: Vec<f64> = cy.iter().map(|v| v.parse().unwrap()).collect();
        assert!(y[0] < y[1], "{y:?}");
        let bad = [e("x", 0.9, 0.95, 1.0)];
        assert!(interval_plot_svg(
            &PlotText::new("t", "x", "y"),
            &[("s", &bad)],
            (0.0, 1.0),
            None
        )
        .is_err());
    }
}
