//! The task that polls every Redis call of one connection, in the order the calls were made,
//! whatever their callers do meanwhile.
//!
//! redis-rs queues the requests of a multiplexed connection through a bounded, fair channel: a
//! request future granted a slot holds it until it is polled again. A room that awaited one
//! call in the body of a `select!` arm while its pipelined commits sat unpolled in another arm
//! held slots that way; with enough such rooms every slot was held by a future nobody polled,
//! and the connection stopped writing for the whole gateway (no error, no CPU). Here a call is
//! handed to the driver at its first poll and polled by the driver from then on: a caller that
//! stops polling only stops waiting for the answer.
//!
//! Order: calls reach the driver in the order of their first polls (one unbounded channel),
//! and the driver first-polls them in that order (a `FuturesUnordered` polls new futures in
//! push order), so they enter redis-rs's queue — and reach Redis — in the callers' order, as
//! a room's pipelined commits need. Two things would break that, and are ruled out:
//! - redis-rs's queue being full: a call that waits for a slot gets one in turn, but enters
//!   the queue only when it is polled again, and a later call first polled when a slot was
//!   free would pass it. The driver keeps at most `max_in_flight` calls unanswered — fewer
//!   than the queue holds — so a first poll always finds a slot; the others wait in the
//!   driver's own FIFO.
//! - tokio's cooperative budget: a call first polled after the task had spent it would step
//!   aside (pending, woken again at the back). The driver runs outside the budget and yields
//!   to the runtime by itself, every [`YIELD_EVERY`] turns.

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use redis::RedisResult;
use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// How long the driver waits for a call's answer before giving up on it (its caller gave up
/// long before: callers bound their calls by the much shorter call timeout).
const DRIVEN_FOR: Duration = Duration::from_secs(60);

type Job = BoxFuture<'static, ()>;

/// Turns of the driver's loop between two yields to the runtime.
const YIELD_EVERY: u32 = 256;

/// A handle on the driver task (clones share it; the task ends with the last handle, once the
/// calls it holds are done).
#[derive(Clone)]
pub(super) struct Driver {
    tx: mpsc::UnboundedSender<Job>,
}

impl Driver {
    /// Starts the driver task (on the current tokio runtime); at most `max_in_flight` calls
    /// are unanswered at once (less than the connection's request queue holds).
    pub fn start(max_in_flight: usize) -> Driver {
        let max_in_flight = max_in_flight.max(1);
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(tokio::task::unconstrained(async move {
            let mut calls = FuturesUnordered::new();
            let mut waiting: VecDeque<Job> = VecDeque::new();
            let mut turns = 0u32;
            let mut open = true;
            while open || !calls.is_empty() || !waiting.is_empty() {
                turns += 1;
                if turns == YIELD_EVERY {
                    turns = 0;
                    tokio::task::yield_now().await;
                }
                tokio::select! {
                    job = rx.recv(), if open => match job {
                        Some(job) => {
                            waiting.push_back(job);
                            while let Ok(job) = rx.try_recv() {
                                waiting.push_back(job);
                            }
                        }
                        None => open = false,
                    },
                    Some(()) = calls.next(), if !calls.is_empty() => {}
                }
                while calls.len() < max_in_flight {
                    let Some(job) = waiting.pop_front() else {
                        break;
                    };
                    calls.push(job);
                }
            }
        }));
        Driver { tx }
    }

    /// Runs `call` on the driver (handed over at this future's first poll) and waits for its
    /// answer.
    pub async fn run<T: Send + 'static>(
        &self,
        call: impl Future<Output = RedisResult<T>> + Send + 'static,
    ) -> RedisResult<T> {
        let (done, answer) = oneshot::channel();
        let job: Job = Box::pin(async move {
            let answer = tokio::time::timeout(DRIVEN_FOR, call)
                .await
                .unwrap_or_else(|_| {
                    Err(io_error(
                        "no answer from Redis",
                        format!("within {DRIVEN_FOR:?}"),
                    ))
                });
            let _ = done.send(answer);
        });
        if self.tx.send(job).is_err() {
            return Err(io_error(
                "the Redis connection's driver stopped",
                String::new(),
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(io_error(
                "the Redis connection's driver dropped a call",
                String::new(),
            ))
        })
    }
}

fn io_error(what: &'static str, detail: String) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, what, detail))
}
