//! The PNG of a load run: forwarded packets per second and server CPU (top), forwarding latency
//! p50/p99 (bottom), each against the load (participants connected).
//!
//! plotters draws the charts (bitmap backend, no font feature: plotters' font features are
//! shared with criterion's plots through Cargo feature unification, and its `ab_glyph` one
//! makes criterion panic without a registered font). The text is rasterised here with
//! `ab_glyph` from a TrueType file found at run time (`$COMMHUB_PLOT_FONT` or a few common
//! paths); without one the PNG has no text.

use ab_glyph::{Font, FontVec, PxScale, ScaleFont, point};
use anyhow::anyhow;
use plotters::prelude::*;

/// One point: the load and what was measured under it.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub participants: f64,
    pub forwarded_pps: f64,
    /// Server CPU, percent of one core (None without a server pid).
    pub server_cpu_pct: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];

fn load_font() -> Option<FontVec> {
    let env = std::env::var("COMMHUB_PLOT_FONT").ok();
    env.iter()
        .map(String::as_str)
        .chain(FONT_PATHS.iter().copied())
        .find_map(|p| FontVec::try_from_vec(std::fs::read(p).ok()?).ok())
}

#[derive(Clone, Copy)]
enum Align {
    Left,
    Center,
    Right,
}

/// Text to draw once the charts are done: top-left anchored at (x, y) per `align`.
struct Label {
    x: i32,
    y: i32,
    size: f32,
    text: String,
    align: Align,
    color: (u8, u8, u8),
}

fn label(x: i32, y: i32, size: f32, text: impl Into<String>, align: Align) -> Label {
    Label {
        x,
        y,
        size,
        text: text.into(),
        align,
        color: (0, 0, 0),
    }
}

/// Rasterise `l` into an RGB buffer of width `w`.
fn draw_label(buf: &mut [u8], w: u32, font: &FontVec, l: &Label) {
    let scaled = font.as_scaled(PxScale::from(l.size));
    let width: f32 = l
        .text
        .chars()
        .map(|c| scaled.h_advance(scaled.glyph_id(c)))
        .sum();
    let mut x = match l.align {
        Align::Left => l.x as f32,
        Align::Center => l.x as f32 - width / 2.0,
        Align::Right => l.x as f32 - width,
    };
    let baseline = l.y as f32 + scaled.ascent();
    let h = (buf.len() / 3) as u32 / w;
    for c in l.text.chars() {
        let id = scaled.glyph_id(c);
        let glyph = id.with_scale_and_position(l.size, point(x, baseline));
        x += scaled.h_advance(id);
        let Some(og) = font.outline_glyph(glyph) else {
            continue;
        };
        let b = og.px_bounds();
        og.draw(|gx, gy, cov| {
            let px = b.min.x as i64 + i64::from(gx);
            let py = b.min.y as i64 + i64::from(gy);
            if px < 0 || py < 0 || px >= i64::from(w) || py >= i64::from(h) {
                return;
            }
            let i = (py as usize * w as usize + px as usize) * 3;
            let cov = cov.clamp(0.0, 1.0);
            for (k, c) in [l.color.0, l.color.1, l.color.2].into_iter().enumerate() {
                let bg = f32::from(buf[i + k]);
                buf[i + k] = (bg + (f32::from(c) - bg) * cov).round() as u8;
            }
        });
    }
}

/// About five round tick values in 0..=max.
fn ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0];
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|s| max / s <= 6.0)
        .unwrap_or(10.0 * mag);
    (0..)
        .map(|i| f64::from(i) * step)
        .take_while(|v| *v <= max * 1.0001)
        .collect()
}

fn fmt_tick(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn max_of(it: impl Iterator<Item = f64>) -> f64 {
    it.filter(|v| v.is_finite()).fold(0.0, f64::max)
}

const W: u32 = 1000;
const H: u32 = 820;

/// Draw `points` to `path` (PNG).
pub fn plot(path: &str, title: &str, points: &[Point]) -> anyhow::Result<()> {
    let x_max = max_of(points.iter().map(|p| p.participants)).max(1.0) * 1.05;
    let pps_max = max_of(points.iter().map(|p| p.forwarded_pps)).max(1.0) * 1.1;
    let cpu_max = max_of(points.iter().filter_map(|p| p.server_cpu_pct)).max(10.0) * 1.1;
    let lat_max = max_of(points.iter().filter_map(|p| p.p99_ms)).max(0.1) * 1.1;
    let e = |e: DrawingAreaErrorKind<_>| anyhow!("{e:?}");
    let gray = RGBColor(220, 220, 220);
    let green = RGBColor(0, 150, 0);
    let mut buf = vec![255u8; (W * H * 3) as usize];
    let mut labels = vec![label(W as i32 / 2, 8, 22.0, title, Align::Center)];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (W, H)).into_drawing_area();
        root.fill(&WHITE).map_err(e)?;
        let (top, bottom) = root.margin(40, 0, 0, 0).split_vertically(390);

        // Throughput and CPU.
        let mut chart = ChartBuilder::on(&top)
            .margin(12)
            .margin_top(34)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..pps_max)
            .map_err(e)?
            .set_secondary_coord(0.0..x_max, 0.0..cpu_max);
        let area = chart.plotting_area();
        for v in ticks(x_max / 1.05) {
            area.draw(&PathElement::new(vec![(v, 0.0), (v, pps_max)], gray))
                .map_err(e)?;
            let (px, py) = chart.backend_coord(&(v, 0.0));
            labels.push(label(px, py + 6, 14.0, fmt_tick(v), Align::Center));
        }
        for v in ticks(pps_max / 1.1) {
            area.draw(&PathElement::new(vec![(0.0, v), (x_max, v)], gray))
                .map_err(e)?;
            let (px, py) = chart.backend_coord(&(0.0, v));
            labels.push(label(px - 6, py - 8, 14.0, fmt_tick(v), Align::Right));
        }
        for v in ticks(cpu_max / 1.1) {
            let (px, py) = chart.borrow_secondary().backend_coord(&(x_max, v));
            let mut l = label(px + 6, py - 8, 14.0, fmt_tick(v), Align::Left);
            l.color = (200, 0, 0);
            labels.push(l);
        }
        area.draw(&Rectangle::new([(0.0, 0.0), (x_max, pps_max)], BLACK))
            .map_err(e)?;
        chart
            .draw_series(
                points
                    .iter()
                    .map(|p| Circle::new((p.participants, p.forwarded_pps), 3, BLUE.filled())),
            )
            .map_err(e)?;
        chart
            .draw_secondary_series(points.iter().filter_map(|p| {
                p.server_cpu_pct
                    .map(|c| TriangleMarker::new((p.participants, c), 4, RED.filled()))
            }))
            .map_err(e)?;
        let (x0, y0) = chart.backend_coord(&(0.0, pps_max));
        labels.push(label(
            x0,
            y0 - 26,
            16.0,
            "forwarded packets/s (blue, left) and server CPU, % of one core (red, right)",
            Align::Left,
        ));
        let (x1, y1) = chart.backend_coord(&(x_max / 2.0, 0.0));
        labels.push(label(
            x1,
            y1 + 24,
            14.0,
            "participants connected",
            Align::Center,
        ));

        // Latency.
        let mut chart = ChartBuilder::on(&bottom)
            .margin(12)
            .margin_top(34)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .right_y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..lat_max)
            .map_err(e)?;
        let area = chart.plotting_area();
        for v in ticks(x_max / 1.05) {
            area.draw(&PathElement::new(vec![(v, 0.0), (v, lat_max)], gray))
                .map_err(e)?;
            let (px, py) = chart.backend_coord(&(v, 0.0));
            labels.push(label(px, py + 6, 14.0, fmt_tick(v), Align::Center));
        }
        for v in ticks(lat_max / 1.1) {
            area.draw(&PathElement::new(vec![(0.0, v), (x_max, v)], gray))
                .map_err(e)?;
            let (px, py) = chart.backend_coord(&(0.0, v));
            labels.push(label(px - 6, py - 8, 14.0, fmt_tick(v), Align::Right));
        }
        area.draw(&Rectangle::new([(0.0, 0.0), (x_max, lat_max)], BLACK))
            .map_err(e)?;
        chart
            .draw_series(points.iter().filter_map(|p| {
                p.p50_ms
                    .map(|v| Circle::new((p.participants, v), 3, green.filled()))
            }))
            .map_err(e)?;
        chart
            .draw_series(points.iter().filter_map(|p| {
                p.p99_ms
                    .map(|v| Circle::new((p.participants, v), 3, MAGENTA.filled()))
            }))
            .map_err(e)?;
        let (x0, y0) = chart.backend_coord(&(0.0, lat_max));
        labels.push(label(
            x0,
            y0 - 26,
            16.0,
            "forwarding latency, ms: p50 (green), p99 (magenta)",
            Align::Left,
        ));
        let (x1, y1) = chart.backend_coord(&(x_max / 2.0, 0.0));
        labels.push(label(
            x1,
            y1 + 24,
            14.0,
            "participants connected",
            Align::Center,
        ));
        root.present().map_err(e)?;
    }
    if let Some(font) = load_font() {
        for l in &labels {
            draw_label(&mut buf, W, &font, l);
        }
    }
    let mut out = BitMapBackend::new(path, (W, H));
    out.blit_bitmap((0, 0), (W, H), &buf)
        .map_err(|e| anyhow!("{e:?}"))?;
    out.present().map_err(|e| anyhow!("{e:?}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ticks_are_round() {
        assert_eq!(ticks(100.0), vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]);
        assert_eq!(ticks(7.0), vec![0.0, 2.0, 4.0, 6.0]);
        assert_eq!(ticks(0.0), vec![0.0]);
    }

    #[test]
    fn writes_a_png() {
        let dir = std::env::temp_dir().join(format!("commhub-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.png");
        let pts: Vec<Point> = (1..20)
            .map(|i| Point {
                participants: f64::from(i),
                forwarded_pps: f64::from(i * i) * 50.0,
                server_cpu_pct: Some(f64::from(i) * 3.0),
                p50_ms: Some(0.5),
                p99_ms: Some(f64::from(i) * 0.1),
            })
            .collect();
        plot(path.to_str().unwrap(), "test", &pts).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
