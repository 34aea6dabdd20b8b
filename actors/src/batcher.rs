//! Batcher: gathers pods that need capacity into one batch (idle window 1 s, max 10 s), then hands
//! the batch to the Solver as the start of one `provision` trace.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use rafter::state::window::BatchWindow;
use tokio::time::Instant;

use crate::context::Ctx;
pub use crate::messages::BatcherMessage;
use crate::messages::{SolverMessage, peer};
use crate::timeline::Mark;

#[derive(Debug)]
pub struct Batcher;

#[derive(Debug)]
pub struct BatcherState {
    ctx: Ctx,
    window: BatchWindow<Instant>,
    tick_scheduled: bool,
}

pub type BatcherArgs = Ctx;

impl Batcher {
    fn schedule(myself: &ActorRef<BatcherMessage>, state: &mut BatcherState) {
        if state.tick_scheduled {
            return;
        }
        if let Some(deadline) = state.window.deadline() {
            state.tick_scheduled = true;
            myself.send_after(deadline.saturating_duration_since(Instant::now()), || BatcherMessage::Tick);
        }
    }
}

impl Actor for Batcher {
    type Msg = BatcherMessage;
    type State = BatcherState;
    type Arguments = BatcherArgs;

    async fn pre_start(&self, myself: ActorRef<Self::Msg>, ctx: Ctx) -> Result<Self::State, ActorProcessingErr> {
        let window = BatchWindow::new(ctx.config.batch_idle, ctx.config.batch_max);
        // A new leader (or a restarted batcher) looks at what is already pending.
        if ctx.caches.pods.all().iter().any(|p| rafter::state::provisionable(p)) {
            let _ = myself.cast(BatcherMessage::Pending);
        }
        Ok(BatcherState { ctx, window, tick_scheduled: false })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            BatcherMessage::Pending => {
                state.window.observe(Instant::now());
                Self::schedule(&myself, state);
            }
            BatcherMessage::Tick => {
                state.tick_scheduled = false;
                let now = Instant::now();
                if !state.window.due(now) {
                    Self::schedule(&myself, state);
                    return Ok(());
                }
                let Some((opened, _arrivals)) = state.window.close() else { return Ok(()) };
                let pending: usize =
                    state.ctx.caches.pods.all().iter().filter(|p| rafter::state::provisionable(p)).count();
                let took = now.duration_since(opened);
                state.ctx.metrics.batch_duration.observe(took.as_secs_f64());
                state.ctx.metrics.batch_size.observe(pending as f64);
                state.ctx.metrics.pods_pending.set(pending as i64);
                if pending == 0 {
                    return Ok(());
                }
                let span =
                    tracing::info_span!(parent: None, "provision", pods = pending, leader = %state.ctx.config.identity);
                span.in_scope(|| tracing::info!("Batched {pending} pods in {:.2}s", took.as_secs_f64()));
                state.ctx.timeline.mark(Mark::BatchClosed { pods: pending });
                match peer(&state.ctx.peers.solver) {
                    Some(solver) => {
                        let _ = solver.cast(SolverMessage::Solve { span });
                    }
                    None => {
                        // The solver is restarting: try again shortly.
                        state.window.observe(now);
                        Self::schedule(&myself, state);
                    }
                }
            }
        }
        Ok(())
    }
}
