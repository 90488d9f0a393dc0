//! The control plane: the serving state behind one swappable pointer (`registry`), building it
//! from a config (`loader`), applying config changes without failing a request (`reload`), and
//! the HTTP side port for Prometheus and health probes (`http_port`), whose scrapes are rendered
//! at a bounded cost (`scrape`).

pub mod http_port;
pub mod loader;
pub mod registry;
pub mod reload;
pub mod scrape;
