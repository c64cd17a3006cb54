//! Property: under the real scheme (server rebases incoming lists over what was committed since
//! their base; clients transform committed lists over their pending ones), every replica ends
//! with the same state hash, and no valid edit is ever rejected.

use super::gen::{config, doc, op_list, Rng};
use crate::doc::check::check_converged;
use crate::doc::sim::{SimClient, SimServer};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::Value;

fn send(server: &mut SimServer, client: &mut SimClient) -> Result<(), TestCaseError> {
    if let Some((base, ops)) = client.take_send() {
        let sent = crate::doc::encode_ops(&ops);
        server
            .submit(client.id, base, &ops)
            .map_err(|e| TestCaseError::fail(format!("rejected {sent} at base {base}: {e}")))?;
    }
    Ok(())
}

fn deliver(server: &SimServer, client: &mut SimClient) -> Result<bool, TestCaseError> {
    let Some(c) = server.log.get(client.seq as usize) else {
        return Ok(false);
    };
    client.receive(c).map_err(|e| {
        TestCaseError::fail(format!(
            "client {} cannot apply seq {}: {e}",
            client.id, c.seq
        ))
    })?;
    Ok(true)
}

fn run(initial: Value, clients: usize, steps: usize, seed: u64) -> Result<(), TestCaseError> {
    let mut rng = Rng::new(seed);
    let mut server = SimServer::new(initial.clone());
    let mut cs: Vec<SimClient> = (0..clients)
        .map(|id| SimClient::new(id, initial.clone(), 0))
        .collect();
    for _ in 0..steps {
        let c = &mut cs[rng.below(clients)];
        match rng.below(3) {
            0 => {
                let n = 1 + rng.below(3);
                let ops = op_list(&c.state, n, &mut rng);
                c.edit(&ops)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            1 => send(&mut server, c)?,
            _ => {
                deliver(&server, c)?;
            }
        }
    }
    // Quiesce: deliver everything, send what is pending, until nothing moves.
    loop {
        let mut moved = false;
        for c in &mut cs {
            while deliver(&server, c)? {
                moved = true;
            }
            if c.in_flight.is_none() && !c.buffer.is_empty() {
                send(&mut server, c)?;
                moved = true;
            }
        }
        if !moved {
            break;
        }
    }
    check_converged(std::iter::once(&server.state).chain(cs.iter().map(|c| &c.state)))
        .map_err(|v| TestCaseError::fail(v.0))
}

proptest! {
    #![proptest_config(config(50, 500))]

    #[test]
    fn replicas_converge(s in doc(), clients in 2usize..5, steps in 5usize..60, seed in any::<u64>()) {
        run(s, clients, steps, seed)?;
    }
}
