//! PNG plots of a report, drawn with plotters' bitmap backend.
//!
//! Text needs a TrueType font: plotters' `ab_glyph` feature renders a font
//! registered at run time, read from `LOADTEST_FONT` or Debian's
//! `fonts-dejavu-core` (`/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf`;
//! `bench/setup.sh` installs it). No system font library is involved.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context as _;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::disruption::Phase;
use crate::report::{ChangeReport, Report};

const FONT_PATHS: [&str; 2] =
    ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"];

fn register_font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let candidates: Vec<PathBuf> = std::env::var_os("LOADTEST_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from))
            .collect();
        let Some(bytes) = candidates.iter().find_map(|p| std::fs::read(p).ok()) else {
            return Err(format!(
                "no TrueType font found (tried {candidates:?}); install fonts-dejavu-core or set LOADTEST_FONT"
            ));
        };
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the font file is not a usable TrueType font".to_string())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

type Res = anyhow::Result<()>;

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("plotting failed: {e:?}")
}

/// Write every plot of `report` into `dir`; returns the files written.
pub fn write_all(report: &Report, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut out = Vec::new();
    if !report.convergence.cdf.is_empty() {
        let p = dir.join("convergence-cdf.png");
        convergence_cdf(report, &p)?;
        out.push(p);
    }
    if report.changes.iter().any(|c| !c.cdf.is_empty()) {
        let p = dir.join("convergence-over-time.png");
        convergence_over_time(report, &p)?;
        out.push(p);
    }
    if !report.timeline.is_empty() {
        let p = dir.join("proxies-and-pushes.png");
        proxies_and_pushes(report, &p)?;
        out.push(p);
        if report.timeline.iter().any(|t| t.target_rss_kb.is_some()) {
            let p = dir.join("control-plane-rss-cpu.png");
            rss_cpu(report, &p)?;
            out.push(p);
        }
    }
    Ok(out)
}

fn title(report: &Report, what: &str) -> String {
    format!("{what}: {} proxies ({}, {:?})", report.proxies.requested, report.proxies.api, scenario(report))
}

fn scenario(report: &Report) -> String {
    report.parameters.get("scenario").and_then(|s| s.as_str()).unwrap_or("?").to_string()
}

/// What convergence times run from.
fn write_kind(report: &Report) -> &'static str {
    if report.store.is_some() { "store write" } else { "file write" }
}

/// The color of a disruption phase's lines.
fn phase_color(phase: Option<Phase>) -> RGBColor {
    match phase {
        None => BLUE,
        Some(Phase::Before) => RGBColor(0, 150, 0),
        Some(Phase::InFlight) => RGBColor(230, 140, 0),
        Some(Phase::During) => RED,
        Some(Phase::After) => RGBColor(120, 0, 200),
    }
}

/// A labelled vertical line at the kill (x in seconds since the run started).
fn kill_marker<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    report: &Report,
    y_max: f64,
) -> Res {
    let Some(d) = &report.disruption else { return Ok(()) };
    let who = d.name.as_deref().unwrap_or("process");
    chart.draw_series(LineSeries::new(vec![(d.at_s, 0.0), (d.at_s, y_max)], BLACK.stroke_width(2))).map_err(err)?;
    chart
        .draw_series(std::iter::once(Text::new(
            format!(" {} {who} ({})", d.signal, d.pid),
            (d.at_s, y_max * 0.97),
            ("sans-serif", 14),
        )))
        .map_err(err)?;
    Ok(())
}

fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    position: SeriesLabelPosition,
) -> Res {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)
}

fn convergence_cdf(report: &Report, path: &Path) -> Res {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let cdf = &report.convergence.cdf;
    let max_x = cdf.iter().map(|p| p.0).fold(1.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title(report, "Convergence after a change"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_x, 0.0..1.0)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("ms from the {} to the proxy's ACK", write_kind(report)))
        .y_desc("share of (change, proxy) pairs converged")
        .draw()
        .map_err(err)?;
    let mut points = vec![(0.0, 0.0)];
    points.extend(cdf.iter().copied());
    chart
        .draw_series(LineSeries::new(points, BLUE.stroke_width(2)))
        .map_err(err)?
        .label("all changes")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    // With a kill: one curve per phase of the changes.
    if let Some(d) = &report.disruption {
        for p in d.phases.iter().filter(|p| !p.cdf.is_empty()) {
            let color = phase_color(p.phase);
            let mut points = vec![(0.0, 0.0)];
            points.extend(p.cdf.iter().copied());
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(1)))
                .map_err(err)?
                .label(format!("{} the {} ({} changes)", p.phase.map_or("?", Phase::label), d.signal, p.changes))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
    for (q, v) in [("p50", report.convergence.p50_ms), ("p99", report.convergence.p99_ms)] {
        if let Some(v) = v {
            chart.draw_series(LineSeries::new(vec![(v, 0.0), (v, 1.0)], RED.mix(0.4))).map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(format!("{q} {v:.0} ms"), (v, 0.05), ("sans-serif", 15))))
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// Each change's share of affected proxies converged over the run's time,
/// colored by its phase when a process was killed (the kill is marked).
fn convergence_over_time(report: &Report, path: &Path) -> Res {
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let end = |c: &ChangeReport| c.written_at_s + c.cdf.last().map_or(0.0, |p| p.0) / 1e3;
    let max_t = report.changes.iter().map(end).fold(report.disruption.as_ref().map_or(1.0, |d| d.at_s), f64::max);
    let min_t = report.changes.iter().map(|c| c.written_at_s).fold(max_t, f64::min);
    let span = (max_t - min_t).max(1.0);
    let x = (min_t - span * 0.02)..(max_t + span * 0.05);
    let mut chart = ChartBuilder::on(&root)
        .caption(title(report, "Share converged over time, per change"), ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x, 0.0..1.05)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(format!("s since loadtest started (each curve starts at its change's {})", write_kind(report)))
        .y_desc("share of the change's proxies converged")
        .draw()
        .map_err(err)?;
    let mut labelled = std::collections::BTreeSet::new();
    for c in report.changes.iter().filter(|c| !c.cdf.is_empty()) {
        let color = phase_color(c.phase);
        let mut points = vec![(c.written_at_s, 0.0)];
        points.extend(c.cdf.iter().map(|(ms, share)| (c.written_at_s + ms / 1e3, *share)));
        let series = chart.draw_series(LineSeries::new(points, color.stroke_width(1))).map_err(err)?;
        if let Some(phase) = c.phase
            && labelled.insert(phase)
        {
            series
                .label(format!("changes {}", phase.label()))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
    }
    kill_marker(&mut chart, report, 1.05)?;
    if !labelled.is_empty() {
        legend(&mut chart, SeriesLabelPosition::LowerRight)?;
    }
    root.present().map_err(err)
}

fn proxies_and_pushes(report: &Report, path: &Path) -> Res {
    let root = BitMapBackend::new(path, (900, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(360);
    let t = &report.timeline;
    let max_t = t.last().map_or(1.0, |x| x.t_s).max(1.0);
    let max_p = t.iter().map(|x| x.connected.max(x.synced)).max().unwrap_or(1).max(1) as f64 * 1.05;
    let mut chart = ChartBuilder::on(&top)
        .caption(title(report, "Connected proxies"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t, 0.0..max_p)
        .map_err(err)?;
    chart.configure_mesh().x_desc("s").y_desc("proxies").draw().map_err(err)?;
    chart
        .draw_series(LineSeries::new(t.iter().map(|x| (x.t_s, x.connected as f64)), BLUE.stroke_width(2)))
        .map_err(err)?
        .label("connected")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_series(LineSeries::new(t.iter().map(|x| (x.t_s, x.synced as f64)), GREEN.stroke_width(2)))
        .map_err(err)?
        .label("synced")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    kill_marker(&mut chart, report, max_p)?;
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;

    let max_r = t.iter().map(|x| x.responses_per_s).fold(1.0, f64::max) * 1.05;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("Push rate (responses received per second, all proxies)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t, 0.0..max_r)
        .map_err(err)?;
    chart.configure_mesh().x_desc("s").y_desc("responses/s").draw().map_err(err)?;
    chart
        .draw_series(LineSeries::new(t.iter().map(|x| (x.t_s, x.responses_per_s)), RED.stroke_width(2)))
        .map_err(err)?;
    kill_marker(&mut chart, report, max_r)?;
    root.present().map_err(err)
}

fn rss_cpu(report: &Report, path: &Path) -> Res {
    let root = BitMapBackend::new(path, (900, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let (top, bottom) = root.split_vertically(360);
    let t = &report.timeline;
    let max_t = t.last().map_or(1.0, |x| x.t_s).max(1.0);
    let rss: Vec<(f64, f64)> = t.iter().filter_map(|x| x.target_rss_kb.map(|r| (x.t_s, r as f64 / 1024.0))).collect();
    let max_rss = rss.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&top)
        .caption(title(report, "Control-plane RSS"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t, 0.0..max_rss)
        .map_err(err)?;
    chart.configure_mesh().x_desc("s").y_desc("MiB").draw().map_err(err)?;
    kill_marker(&mut chart, report, max_rss)?;
    chart
        .draw_series(LineSeries::new(rss, BLUE.stroke_width(2)))
        .map_err(err)?
        .label("all")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    // One line per process when several were measured.
    let pids: std::collections::BTreeSet<u32> = t.iter().flat_map(|x| x.target_rss_by_pid.keys().copied()).collect();
    for (i, pid) in pids.iter().enumerate() {
        let color = Palette99::pick(i + 1).to_rgba();
        let line: Vec<(f64, f64)> =
            t.iter().filter_map(|x| x.target_rss_by_pid.get(pid).map(|r| (x.t_s, *r as f64 / 1024.0))).collect();
        chart
            .draw_series(LineSeries::new(line, color.stroke_width(1)))
            .map_err(err)?
            .label(match report.target.as_ref().and_then(|t| t.names.get(pid)) {
                Some(name) => format!("{name} ({pid})"),
                None => format!("pid {pid}"),
            })
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    if !pids.is_empty() {
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(err)?;
    }
    let cpu: Vec<(f64, f64)> = t.iter().filter_map(|x| x.target_cpu.map(|c| (x.t_s, c))).collect();
    let max_cpu = cpu.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("Control-plane CPU", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_t, 0.0..max_cpu)
        .map_err(err)?;
    chart.configure_mesh().x_desc("s").y_desc("cores").draw().map_err(err)?;
    chart.draw_series(LineSeries::new(cpu, RED.stroke_width(2))).map_err(err)?;
    kill_marker(&mut chart, report, max_cpu)?;
    root.present().map_err(err)
}
