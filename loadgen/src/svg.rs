//! The hand-drawn SVG charts' common parts: the page, the plot frame with gridlines and axis
//! labels, curves and the legend. `report::percentile_svg` and `sweep::load_svg` draw with it.
//!
//! Owns: [`Frame`] (the page size and the plot area inside its margins) and [`escape`].

use std::fmt::Write as _;

/// A page of `width` × `height` with the plot inside the margins.
pub struct Frame {
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub right: f64,
    pub top: f64,
    pub bottom: f64,
}

impl Frame {
    /// A 900-pixel-wide chart of `height` with the margins both charts use (room for the
    /// axis labels left and below, the title above).
    pub fn chart(height: f64) -> Frame {
        Frame {
            width: 900.0,
            height,
            left: 80.0,
            right: 30.0,
            top: 50.0,
            bottom: 70.0,
        }
    }

    pub fn plot_width(&self) -> f64 {
        self.width - self.left - self.right
    }

    pub fn plot_height(&self) -> f64 {
        self.height - self.top - self.bottom
    }

    /// The `<svg>` element, a white page and the title (closed by [`Frame::close`]).
    pub fn open(&self, title: &str, title_size: u32) -> String {
        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif" font-size="13">"#,
            self.width, self.height
        );
        let _ = write!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = write!(
            svg,
            r#"<text x="{}" y="28" text-anchor="middle" font-size="{title_size}">{}</text>"#,
            self.width / 2.0,
            escape(title)
        );
        svg
    }

    /// A vertical gridline at `x` labelled below the plot.
    pub fn x_grid(&self, svg: &mut String, x: f64, label: &str) {
        let _ = write!(
            svg,
            r##"<line x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            self.top,
            self.top + self.plot_height(),
            self.top + self.plot_height() + 18.0
        );
    }

    /// A horizontal gridline at `y` labelled left of the plot.
    pub fn y_grid(&self, svg: &mut String, y: f64, label: &str) {
        let _ = write!(
            svg,
            r##"<line x1="{}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
            self.left,
            self.left + self.plot_width(),
            self.left - 6.0,
            y + 4.0,
        );
    }

    /// The plot's border and the two axis labels.
    pub fn axes(&self, svg: &mut String, x_label: &str, y_label: &str) {
        let _ = write!(
            svg,
            r##"<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
            self.left,
            self.top,
            self.plot_width(),
            self.plot_height()
        );
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            self.left + self.plot_width() / 2.0,
            self.height - 20.0,
            escape(x_label)
        );
        let _ = write!(
            svg,
            r#"<text transform="translate(20,{:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            self.top + self.plot_height() / 2.0,
            escape(y_label)
        );
    }

    /// A curve through `points` (page coordinates); `dash` is an SVG dash array ("" = solid).
    pub fn curve(&self, svg: &mut String, colour: &str, dash: &str, points: &[(f64, f64)]) {
        if points.is_empty() {
            return;
        }
        let text: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" stroke-dasharray="{dash}" points="{}"/>"#,
            text.join(" ")
        );
    }

    /// The `index`th legend entry, top left inside the plot.
    pub fn legend(&self, svg: &mut String, index: usize, colour: &str, dash: &str, name: &str) {
        let ly = self.top + 16.0 + index as f64 * 18.0;
        let _ = write!(
            svg,
            r#"<line x1="{:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="3" stroke-dasharray="{dash}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            self.left + 12.0,
            self.left + 36.0,
            self.left + 42.0,
            ly + 4.0,
            escape(name)
        );
    }

    pub fn close(svg: &mut String) {
        svg.push_str("</svg>\n");
    }
}

pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
