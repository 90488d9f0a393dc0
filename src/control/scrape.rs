//! Renders Prometheus scrapes at a bounded cost. A render of every metric takes a couple of
//! milliseconds of CPU; sixteen clients looping `GET /metrics` used to take both cores and
//! multiply live callers' p99 by ten. Here renders run one at a time, off the async runtime's
//! threads, spaced by nine times the last one's duration, so a flood of scrapers spends at most a
//! tenth of one core rendering. Every scrape is still answered with a render begun after it
//! arrived: scrapers that arrive during a render share the next one, and no answer is older
//! than the request.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// The pause after a render, as a multiple of how long it took: a render's share of one core
/// under a flood of scrapers is at most `1 / (1 + GAP_FACTOR)`.
const GAP_FACTOR: u32 = 9;
/// The shortest pause after a render, for renders too quick to measure well.
const MIN_GAP: Duration = Duration::from_millis(2);

/// Clones share the renders.
#[derive(Clone)]
pub struct Renderer(Arc<Inner>);

struct Inner {
    handle: PrometheusHandle,
    last: Mutex<Last>,
}

/// The latest render: when it began, its text, and when the next may begin.
struct Last {
    began: Option<Instant>,
    text: Bytes,
    next_allowed: Instant,
}

impl Renderer {
    pub fn new(handle: PrometheusHandle) -> Renderer {
        let last = Last { began: None, text: Bytes::new(), next_allowed: Instant::now() };
        Renderer(Arc::new(Inner { handle, last: Mutex::new(last) }))
    }

    /// The metrics as a render begun no earlier than this call.
    pub async fn render(&self) -> Bytes {
        let (arrived, inner) = (Instant::now(), self.0.clone());
        // A task of its own: a scraper that hangs up mid-render must not cut the render short
        // of recording its pause, or hanging up would be a way to render back to back.
        match tokio::spawn(async move { inner.render_since(arrived).await }).await {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "rendering the metrics failed");
                Bytes::new()
            }
        }
    }
}

impl Inner {
    async fn render_since(&self, arrived: Instant) -> Bytes {
        // tokio's mutex queues waiters in order, so a flood cannot starve one scraper.
        let mut last = self.last.lock().await;
        if last.began.is_some_and(|began| began >= arrived) {
            return last.text.clone();
        }
        tokio::time::sleep_until(last.next_allowed).await;
        let began = Instant::now();
        let handle = self.handle.clone();
        // A blocking thread, so a render never holds up a runtime thread that serves calls.
        let text = match tokio::task::spawn_blocking(move || Bytes::from(handle.render())).await {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "rendering the metrics failed");
                Bytes::new()
            }
        };
        let took = began.elapsed();
        *last = Last {
            began: Some(began),
            text: text.clone(),
            next_allowed: Instant::now() + (took * GAP_FACTOR).max(MIN_GAP),
        };
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    fn renderer() -> (Renderer, metrics::Counter) {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let counter = metrics::with_local_recorder(&recorder, || metrics::counter!("scrape_test_total"));
        (Renderer::new(handle), counter)
    }

    #[tokio::test]
    async fn a_scrape_sees_what_happened_before_it_arrived() {
        let (renderer, counter) = renderer();
        for n in 1..=3u64 {
            counter.increment(1);
            let text = renderer.render().await;
            let text = std::str::from_utf8(&text).unwrap();
            assert!(text.contains(&format!("scrape_test_total {n}")), "{text}");
        }
    }

    #[tokio::test]
    async fn a_scrape_whose_client_hangs_up_still_records_its_render() {
        let (renderer, _counter) = renderer();
        // Polled once, then dropped: the client went away while its render was under way.
        let _ = tokio::time::timeout(Duration::ZERO, renderer.render()).await;
        for _ in 0..500 {
            if renderer.0.last.lock().await.began.is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the render was cut short, so the next one would not wait its pause");
    }

    #[tokio::test]
    async fn scrapers_that_arrive_together_share_renders() {
        let (renderer, counter) = renderer();
        counter.increment(1);
        let scrapes: Vec<_> = (0..50)
            .map(|_| {
                let renderer = renderer.clone();
                tokio::spawn(async move { renderer.render().await })
            })
            .collect();
        let mut texts = Vec::new();
        for scrape in scrapes {
            texts.push(scrape.await.unwrap());
        }
        assert!(texts.iter().all(|t| std::str::from_utf8(t).unwrap().contains("scrape_test_total 1")));
        // Bytes share their buffer when cloned: count the distinct renders behind the answers.
        let mut renders: Vec<*const u8> = texts.iter().map(|t| t.as_ptr()).collect();
        renders.sort();
        renders.dedup();
        assert!(renders.len() <= 2, "50 scrapes at once took {} renders", renders.len());
    }
}
