//! Integration tests: the simulator runs in-process on port 0 and is driven by real clients
//! (tokio-tungstenite, reqwest, and a raw socket where a client must misbehave).

mod faults;
mod rest;
mod support;
mod ws_protocol;
