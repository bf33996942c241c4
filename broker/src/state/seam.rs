//! The seam between the broker and whoever orders its commands.
//!
//! Every change to the control state is submitted through [`Control`]:
//! the connection (SUBSCRIBE, UNSUBSCRIBE, a RETAIN publish), the registry
//! (CONNECT, the end of a connection, timers) and reloads. A submission
//! returns a [`Receipt`]: awaited, it gives what the command did on this
//! node ([`Done`]), or a typed [`ControlError`].
//!
//! [`LocalControl`] is the single-node implementation: the command gets
//! the next log position and applies at once (`State::apply_next`), so its
//! receipt is ready when returned. The cluster adds a Raft-backed one
//! behind the same trait: it proposes the command, and the receipt
//! resolves once the entry is committed and applied here
//! (`State::apply_at` with the entry's index).
//!
//! Callers that cannot wait (packet handlers, which acknowledge through
//! durability tickets instead) take [`Receipt::now`]: a receipt not ready
//! yet is an error they report, never a silent success. Those call sites
//! are listed in decision 0008 as the ones the cluster makes asynchronous.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use super::command::Command;
use super::{Done, State};

/// Why a submitted command did not apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The command was not applied yet and the caller could not wait.
    #[error("the command is not applied yet")]
    NotYet,
    /// Whoever orders commands is gone (shutdown, or no quorum).
    #[error("control state unavailable: {0}")]
    Unavailable(String),
}

/// Orders commands and applies them to the control state.
pub trait Control: Send + Sync + fmt::Debug {
    /// Submits `cmd`; the receipt resolves once it is applied here.
    fn submit(&self, cmd: Command) -> Receipt;
}

/// What a submission will have done.
#[derive(Debug)]
pub struct Receipt(Inner);

#[derive(Debug)]
enum Inner {
    Ready(Option<Result<Done, ControlError>>),
    Waiting(oneshot::Receiver<Result<Done, ControlError>>),
}

impl Receipt {
    /// A receipt for a command already applied (or refused).
    pub fn ready(result: Result<Done, ControlError>) -> Receipt {
        Receipt(Inner::Ready(Some(result)))
    }

    /// A receipt that resolves when the sender reports.
    pub fn waiting(rx: oneshot::Receiver<Result<Done, ControlError>>) -> Receipt {
        Receipt(Inner::Waiting(rx))
    }

    /// What the command did, if that is known now.
    pub fn now(self) -> Result<Done, ControlError> {
        match self.0 {
            Inner::Ready(Some(r)) => r,
            Inner::Ready(None) => Err(ControlError::NotYet),
            Inner::Waiting(mut rx) => rx.try_recv().unwrap_or(Err(ControlError::NotYet)),
        }
    }
}

impl Future for Receipt {
    type Output = Result<Done, ControlError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Inner::Ready(r) => Poll::Ready(r.take().unwrap_or(Err(ControlError::NotYet))),
            Inner::Waiting(rx) => Pin::new(rx).poll(cx).map(|r| {
                r.unwrap_or_else(|_| Err(ControlError::Unavailable("control closed".into())))
            }),
        }
    }
}

/// The single-node control: this node's `State` is the log.
#[derive(Debug, Clone)]
pub struct LocalControl {
    state: Arc<State>,
}

impl LocalControl {
    pub fn new(state: Arc<State>) -> LocalControl {
        LocalControl { state }
    }
}

impl Control for LocalControl {
    fn submit(&self, cmd: Command) -> Receipt {
        Receipt::ready(Ok(self.state.apply_next(cmd)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientId, SessionKey, TenantId};
    use crate::metrics::Metrics;
    use crate::state::command::Applied;

    fn connect(client: &str) -> Command {
        Command::Connect {
            key: SessionKey {
                tenant: TenantId::default_tenant(),
                client: ClientId::new(client),
            },
            clean_start: true,
            expiry_interval: 0,
            user: None,
            max_persistent: None,
        }
    }

    #[tokio::test]
    async fn the_local_control_applies_at_once_in_order() {
        let state = Arc::new(State::new(Arc::new(Metrics::default()), None));
        let control = LocalControl::new(state.clone());
        let a = control.submit(connect("a")).await.expect("applied");
        let b = control.submit(connect("b")).now().expect("ready");
        let claim = |d: &Done| match d.applied {
            Applied::Connected { claim, .. } => claim.0,
            _ => 0,
        };
        assert_eq!((claim(&a), claim(&b)), (1, 2));
        assert!(state
            .session(&SessionKey {
                tenant: TenantId::default_tenant(),
                client: ClientId::new("b"),
            })
            .is_some());
    }

    #[tokio::test]
    async fn a_receipt_not_ready_is_an_error_not_a_success() {
        let (tx, rx) = oneshot::channel();
        assert_eq!(
            Receipt::waiting(rx).now().map(|_| ()),
            Err(ControlError::NotYet)
        );
        let (tx2, rx2) = oneshot::channel::<Result<Done, ControlError>>();
        drop(tx2);
        assert!(matches!(
            Receipt::waiting(rx2).await,
            Err(ControlError::Unavailable(_))
        ));
        drop(tx);
    }
}
