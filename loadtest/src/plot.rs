//! SVG plot of latency percentile curves, HDR style: percentile on a log "1/(1-p)" axis.

use std::fmt::Write as _;

const COLORS: &[&str] = &["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b"];

/// `curves`: (target, points (percentile 0..100, latency µs)).
pub fn svg(title: &str, curves: &[(String, Vec<(f64, f64)>)]) -> String {
    let (w, h) = (900.0, 520.0);
    let (l, r, t, b) = (80.0, 180.0, 40.0, 60.0);
    let pw = w - l - r;
    let ph = h - t - b;
    // x: log10(1/(1-p)), p capped at 99.9999%
    let xv = |pct: f64| {
        let p = (pct / 100.0).min(0.999999);
        (1.0 / (1.0 - p)).log10()
    };
    // the 100th percentile (the max) sits one decade right of the last point before it
    let xs = |c: &[(f64, f64)]| -> Vec<f64> {
        let mut out: Vec<f64> = Vec::with_capacity(c.len());
        for &(p, _) in c {
            let x = if p >= 100.0 { out.last().map(|&l| l + 1.0).unwrap_or(1.0).min(xv(p)) } else { xv(p) };
            out.push(x);
        }
        out
    };
    let xmax = curves.iter().flat_map(|(_, c)| xs(c)).fold(2.0f64, f64::max).ceil();
    let ymax_raw = curves.iter().flat_map(|(_, c)| c.iter().map(|&(_, v)| v)).fold(1.0f64, f64::max);
    let (unit, div) = if ymax_raw >= 10_000.0 { ("ms", 1000.0) } else { ("µs", 1.0) };
    let ymax = nice(ymax_raw / div * 1.05);
    let sx = |x: f64| l + x / xmax * pw;
    let sy = |y: f64| t + ph - (y / div) / ymax * ph;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ =
        writeln!(s, r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#, l + pw / 2.0, esc(title));
    // grid and ticks
    for k in 0..=(xmax as usize) {
        let x = sx(k as f64);
        let label = match k {
            0 => "0%".to_string(),
            _ => {
                let nines = 100.0 - 100.0 / 10f64.powi(k as i32);
                format!("{}%", trim(nines))
            }
        };
        let _ = writeln!(
            s,
            r##"<line x1="{x}" y1="{t}" x2="{x}" y2="{}" stroke="#ddd"/><text x="{x}" y="{}" text-anchor="middle">{label}</text>"##,
            t + ph,
            t + ph + 18.0
        );
    }
    for k in 0..=5 {
        let v = ymax * k as f64 / 5.0;
        let y = t + ph - ph * k as f64 / 5.0;
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{y}" x2="{}" y2="{y}" stroke="#ddd"/><text x="{}" y="{}" text-anchor="end">{}</text>"##,
            l + pw,
            l - 6.0,
            y + 4.0,
            trim(v)
        );
    }
    let _ = writeln!(s, r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##);
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">percentile</text>"#, l + pw / 2.0, h - 15.0);
    let _ = writeln!(
        s,
        r#"<text transform="translate(20,{}) rotate(-90)" text-anchor="middle">latency ({unit})</text>"#,
        t + ph / 2.0
    );
    for (i, (name, pts)) in curves.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        if !pts.is_empty() {
            let d: Vec<String> =
                pts.iter().zip(xs(pts)).map(|(&(_, v), x)| format!("{:.1},{:.1}", sx(x), sy(v))).collect();
            let _ = writeln!(s, r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"/>"#, d.join(" "));
        }
        let y = t + 10.0 + 20.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{c}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
            l + pw + 12.0,
            l + pw + 36.0,
            l + pw + 42.0,
            y + 4.0,
            esc(name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn nice(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let e = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * e >= x {
            return m * e;
        }
    }
    10.0 * e
}

fn trim(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders() {
        let s =
            super::svg("t <1>", &[("a".into(), vec![(0.0, 10.0), (50.0, 20.0), (99.9, 400.0)]), ("b".into(), vec![])]);
        assert!(s.starts_with("<svg"));
        assert!(s.contains("polyline"));
        assert!(s.contains("99.9%"));
        assert!(s.contains("t &lt;1&gt;"));
    }
}
