//! Translates an Envoy bootstrap or config dump and prints what is unsupported and
//! rejected: `cargo run -p istio-compat --example translate -- FILE`.

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: translate FILE");
        std::process::exit(2);
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    };
    match istio_compat::translate::from_document(&text) {
        Ok(t) => {
            for u in &t.unsupported {
                println!("unsupported: {u}");
            }
            for r in &t.rejected {
                println!("rejected: {r}");
            }
            println!("{} listeners, {} routes, {} clusters", t.model.listeners.len(), t.model.routes.len(), t.model.clusters.len());
        }
        Err(e) => {
            eprintln!("{path}: {e}");
            std::process::exit(1);
        }
    }
}
