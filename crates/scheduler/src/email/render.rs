//! The alert email: subject, plain-text and HTML bodies, built from a stored delivery by pure
//! functions (no clock, no I/O), so the content is unit-tested byte for byte.
//!
//! The mail names the alert (id and the user's note), the instrument (market and symbol), the
//! condition with its threshold, the trade (price, id, time in UTC ISO 8601) and the value the
//! condition observed. User text (the note) only goes into bodies, HTML-escaped there, never
//! into a header.

use pricefeed_domain::alert::{Condition, Kind};
use pricefeed_store::alerts::EmailDelivery;
use rust_decimal::Decimal;
use time::OffsetDateTime;

/// A rendered mail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// `ms` since the epoch as UTC ISO 8601 with milliseconds (`2026-12-01T09:30:00.123Z`).
pub fn iso_utc(ms: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The condition in words, with its threshold: "last price above 95000".
pub fn describe(c: &Condition) -> String {
    let t = c.threshold.normalize();
    let interval = c.interval.map(|s| s.to_string()).unwrap_or_default();
    let window = c.window.map(|s| s.to_string()).unwrap_or_default();
    match c.kind {
        Kind::Above => format!("last price above {t}"),
        Kind::Below => format!("last price below {t}"),
        Kind::CrossesUp => format!("last price crosses up through {t}"),
        Kind::CrossesDown => format!("last price crosses down through {t}"),
        Kind::VwapAbove => format!("{interval} VWAP above {t}"),
        Kind::VwapBelow => format!("{interval} VWAP below {t}"),
        Kind::MovePct => format!("price moves at least {t} % within {window}"),
        Kind::Zscore => format!("price at least {t} standard deviations from its 24 h mean"),
    }
}

/// What the observed value is, for the line "Observed …".
fn observed_label(k: Kind) -> &'static str {
    match k {
        Kind::Above | Kind::Below | Kind::CrossesUp | Kind::CrossesDown => "last price",
        Kind::VwapAbove | Kind::VwapBelow => "VWAP",
        Kind::MovePct => "move in %",
        Kind::Zscore => "z-score",
    }
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
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

fn num(d: Decimal) -> String {
    d.normalize().to_string()
}

/// Renders the mail of delivery `d`; `base_url` (may be empty) adds a link to the alert's
/// notifications.
pub fn render(d: &EmailDelivery, base_url: &str) -> Rendered {
    let a = &d.alert;
    let market = a.key.market().as_str();
    let symbol = a.key.symbol_str();
    let cond = describe(&a.condition);
    let subject = format!("pricefeed alert #{}: {symbol} ({market}) {cond}", a.id);
    let trade_time = iso_utc(d.trade_ts_ms);
    let observed = format!("{} ({})", num(d.observed), observed_label(a.condition.kind));
    let rows: Vec<(&str, String)> = vec![
        ("Alert", format!("#{}", a.id)),
        ("Note", a.note.clone().unwrap_or_default()),
        ("Instrument", format!("{symbol} ({market})")),
        ("Condition", cond.clone()),
        ("Threshold", num(a.condition.threshold)),
        ("Trade price", num(d.price)),
        ("Trade id", d.trade_id.to_string()),
        ("Trade time", format!("{trade_time} (UTC)")),
        ("Observed", observed),
        (
            "Triggered at",
            format!("{} (UTC)", iso_utc(d.triggered_at_ms)),
        ),
    ];
    let rows: Vec<(&str, String)> = rows
        .into_iter()
        .filter(|(k, v)| !(*k == "Note" && v.is_empty()))
        .collect();
    let link = (!base_url.is_empty()).then(|| {
        format!(
            "{}/api/v1/alerts/{}/notifications",
            base_url.trim_end_matches('/'),
            a.id
        )
    });

    let mut text = format!(
        "Your price alert #{} fired: {symbol} ({market}) {cond}.\n\n",
        a.id
    );
    for (k, v) in &rows {
        text.push_str(&format!("{:<14}{v}\n", format!("{k}:")));
    }
    if let Some(l) = &link {
        text.push_str(&format!("\nDelivery history: {l}\n"));
    }
    text.push_str(&format!(
        "\nOne-shot alerts fire once; re-arming alerts wait for their cooldown.\n\
         Reference: {}\n",
        d.idempotency_key
    ));

    let mut html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\">\
         <p>Your price alert <b>#{}</b> fired: <b>{} ({})</b> {}.</p><table>",
        a.id,
        html_escape(symbol),
        html_escape(market),
        html_escape(&cond)
    );
    for (k, v) in &rows {
        html.push_str(&format!(
            "<tr><th align=\"left\">{}</th><td>{}</td></tr>",
            html_escape(k),
            html_escape(v)
        ));
    }
    html.push_str("</table>");
    if let Some(l) = &link {
        html.push_str(&format!(
            "<p><a href=\"{0}\">Delivery history</a></p>",
            html_escape(l)
        ));
    }
    html.push_str(&format!(
        "<p style=\"color:#666\">Reference: {}</p></body></html>",
        html_escape(&d.idempotency_key)
    ));
    Rendered {
        subject,
        text,
        html,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pricefeed_domain::bucket::Span;
    use pricefeed_domain::instrument::{InstrumentKey, Market, Symbol};
    use pricefeed_store::alerts::Alert;
    use std::str::FromStr;

    fn delivery(cond: Condition, note: Option<&str>) -> EmailDelivery {
        EmailDelivery {
            delivery_id: 7,
            state: "pending".into(),
            idempotency_key: "pf-41-email".into(),
            to: "ann@example.com".into(),
            alert: Alert {
                id: 12,
                user_id: 3,
                key: InstrumentKey::new(Market::Spot, &Symbol::parse("BTCUSDT").unwrap()),
                instrument_id: 1,
                condition: cond,
                channels: vec!["email".into()],
                rearm: None,
                status: "triggered".into(),
                armed: false,
                note: note.map(str::to_string),
                version: 2,
                created_at_ms: 0,
                updated_at_ms: 0,
                last_triggered_at_ms: None,
            },
            trigger_id: 41,
            trade_id: 987_654,
            trade_ts_ms: 1_796_117_400_123,
            price: Decimal::from_str("95012.50").unwrap(),
            observed: Decimal::from_str("95012.50").unwrap(),
            triggered_at_ms: 1_796_117_400_456,
        }
    }

    fn above(t: &str) -> Condition {
        Condition {
            kind: Kind::Above,
            threshold: Decimal::from_str(t).unwrap(),
            interval: None,
            window: None,
        }
    }

    #[test]
    fn times_are_utc_iso_8601_with_milliseconds() {
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_utc(1_796_117_400_123), "2026-12-01T09:30:00.123Z");
        assert_eq!(iso_utc(1_796_117_400_000), "2026-12-01T09:30:00.000Z");
    }

    #[test]
    fn the_plain_text_says_what_fired_on_which_trade() {
        let r = render(&delivery(above("95000"), Some("take profit")), "");
        assert_eq!(
            r.subject,
            "pricefeed alert #12: BTCUSDT (spot) last price above 95000"
        );
        assert_eq!(
            r.text,
            "Your price alert #12 fired: BTCUSDT (spot) last price above 95000.\n\n\
             Alert:        #12\n\
             Note:         take profit\n\
             Instrument:   BTCUSDT (spot)\n\
             Condition:    last price above 95000\n\
             Threshold:    95000\n\
             Trade price:  95012.5\n\
             Trade id:     987654\n\
             Trade time:   2026-12-01T09:30:00.123Z (UTC)\n\
             Observed:     95012.5 (last price)\n\
             Triggered at: 2026-12-01T09:30:00.456Z (UTC)\n\
             \nOne-shot alerts fire once; re-arming alerts wait for their cooldown.\n\
             Reference: pf-41-email\n"
        );
    }

    #[test]
    fn user_text_is_escaped_in_html_and_absent_from_the_subject() {
        let r = render(
            &delivery(above("1"), Some("<script>x</script> & \"q\"")),
            "https://pf.example/",
        );
        assert!(!r.subject.contains("script"));
        assert!(
            r.html
                .contains("&lt;script&gt;x&lt;/script&gt; &amp; &quot;q&quot;")
        );
        assert!(!r.html.contains("<script>"));
        assert!(
            r.text
                .contains("Delivery history: https://pf.example/api/v1/alerts/12/notifications")
        );
        assert!(
            r.html
                .contains("href=\"https://pf.example/api/v1/alerts/12/notifications\"")
        );
        // No note, no empty line for it.
        assert!(
            !render(&delivery(above("1"), None), "")
                .text
                .contains("Note:")
        );
    }

    #[test]
    fn every_condition_reads_as_words() {
        let d = |kind, t: &str, interval, window| Condition {
            kind,
            threshold: Decimal::from_str(t).unwrap(),
            interval,
            window,
        };
        let m5 = "5m".parse::<Span>().ok();
        let m15 = "15m".parse::<Span>().ok();
        for (c, want) in [
            (d(Kind::Below, "1.50", None, None), "last price below 1.5"),
            (
                d(Kind::CrossesUp, "2", None, None),
                "last price crosses up through 2",
            ),
            (
                d(Kind::CrossesDown, "2", None, None),
                "last price crosses down through 2",
            ),
            (d(Kind::VwapAbove, "3", m5, None), "5m VWAP above 3"),
            (d(Kind::VwapBelow, "3", m5, None), "5m VWAP below 3"),
            (
                d(Kind::MovePct, "2.5", None, m15),
                "price moves at least 2.5 % within 15m",
            ),
            (
                d(Kind::Zscore, "3", None, None),
                "price at least 3 standard deviations from its 24 h mean",
            ),
        ] {
            assert_eq!(describe(&c), want);
        }
    }
}
