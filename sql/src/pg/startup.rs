//! Connection start-up: open (no `--auth-file`: any user, no password), or
//! SCRAM-SHA-256 against the credentials file's stored keys ([`crate::auth`]).
//!
//! With credentials the server offers `SCRAM-SHA-256` (never a cleartext or
//! MD5 password); an unknown user goes through the same exchange against a
//! mock verifier, so the answer does not tell whether the user exists. A wrong
//! password or an unknown user ends with `28P01`, a user whose role may not
//! run SQL (`ingest`) with `28000`; each is counted in
//! `treeai_auth_failures_total{protocol="pgwire"}` and written to the audit log.
//! One handler serves one connection (it holds the exchange's state).

use super::wire::Peer;
use super::PgHandler;
use crate::audit::{Audit, AuditEvent};
use crate::auth::{Credentials, Role, ScramOutcome, ScramServer};
use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::StartupHandler;
use pgwire::api::{ClientInfo, PgWireConnectionState};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::{Authentication, Startup};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Instant;

enum State {
    /// Waiting for the startup message.
    Initial,
    /// SASL offered; waiting for the client-first message.
    Offered { startup: Startup, user: String, role: Option<Role>, verifier: crate::auth::Verifier },
    /// Server-first sent; waiting for the client-final message.
    Challenged { startup: Startup, user: String, role: Option<Role>, scram: Box<ScramServer> },
    /// Done (or failed).
    Done,
}

/// The start-up handler of one connection.
pub struct PgStartup {
    handler: Arc<PgHandler>,
    credentials: Option<Arc<Credentials>>,
    audit: Arc<Audit>,
    require_tls: bool,
    /// The client's address and whether it speaks TLS (from [`super::wire`]).
    peer: Peer,
    state: Mutex<State>,
    started: Instant,
    /// Refuse the connection (53300): one more than `--sql-max-connections`.
    too_many: bool,
}

impl PgStartup {
    /// A handler for a new connection (credentials and audit log from the engine); with
    /// `require_tls`, a client that did not ask for TLS is refused.
    pub fn new(handler: Arc<PgHandler>, require_tls: bool, peer: Peer) -> PgStartup {
        let credentials = handler.engine.credentials.clone();
        let audit = handler.engine.audit.clone();
        PgStartup {
            handler,
            credentials,
            audit,
            require_tls,
            peer,
            state: Mutex::new(State::Initial),
            started: Instant::now(),
            too_many: false,
        }
    }

    /// A handler that refuses the connection, after TLS is settled, with Postgres' 53300
    /// (`too_many_connections`).
    pub fn too_many(mut self) -> Self {
        self.too_many = true;
        self
    }

    fn take(&self) -> State {
        std::mem::replace(&mut *self.state.lock().unwrap_or_else(|p| p.into_inner()), State::Done)
    }

    fn put(&self, s: State) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn refuse(&self, user: &str, reason: &'static str, code: &str, message: String) -> PgWireError {
        self.handler.engine.metrics.auth_failure("pgwire", reason);
        self.audit.record(AuditEvent {
            user: Some(user),
            role: None,
            client: Some(self.peer.addr),
            action: "login",
            detail: Some(reason),
            events: None,
            outcome: "refused",
            started: self.started,
        });
        PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), message)))
    }
}

#[async_trait]
impl StartupHandler for PgStartup {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if self.too_many {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "53300".into(),
                format!("too many connections (at most {})", self.handler.engine.config.max_connections),
            ))));
        }
        // The statements' audit lines name the client too.
        if client.session_extensions().get::<Peer>().is_none() {
            client.session_extensions().insert(self.peer);
        }
        if self.require_tls && !self.peer.secure {
            self.handler.engine.metrics.auth_failure("pgwire", "no_tls");
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28000".into(),
                "this server accepts TLS connections only (sslmode=require)".into(),
            ))));
        }
        let Some(credentials) = &self.credentials else {
            // Open: any user, no password.
            let is_startup = matches!(message, PgWireFrontendMessage::Startup(_));
            StartupHandler::on_startup(&*self.handler, client, message).await?;
            if is_startup {
                client.session_extensions().insert(LoggedIn);
            }
            return Ok(());
        };
        match (self.take(), message) {
            (State::Initial, PgWireFrontendMessage::Startup(mut startup)) => {
                pgwire::api::auth::protocol_negotiation(client, &startup).await?;
                pgwire::api::auth::save_startup_parameters_to_metadata(client, &startup);
                // The open handler finishes the start-up later with this message: as negotiated already.
                let (_, minor) = client.protocol_version().version_number();
                startup.protocol_number_minor = minor;
                startup.parameters.retain(|k, _| !k.starts_with("_pq_."));
                let Some(user) = startup.parameters.get("user").cloned() else {
                    return Err(self.refuse("", "no_user", "28000", "no user name given".into()));
                };
                let (role, verifier) = match credentials.user(&user) {
                    Some((role, v)) => (Some(role), v),
                    None => (None, credentials.mock_verifier(&user)),
                };
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASL(vec!["SCRAM-SHA-256".into()])))
                    .await?;
                self.put(State::Offered { startup, user, role, verifier });
                Ok(())
            }
            (State::Offered { startup, user, role, verifier }, PgWireFrontendMessage::PasswordMessageFamily(msg)) => {
                let first = msg.into_sasl_initial_response()?;
                if first.auth_method != "SCRAM-SHA-256" {
                    return Err(self.refuse(
                        &user,
                        "mechanism",
                        "28000",
                        format!("SASL mechanism {:?} is not offered (SCRAM-SHA-256 is)", first.auth_method),
                    ));
                }
                let data = first.data.unwrap_or_default();
                let (scram, server_first) = ScramServer::start(&data, verifier)
                    .map_err(|e| self.refuse(&user, "protocol", "08P01", e.to_string()))?;
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASLContinue(server_first.into())))
                    .await?;
                self.put(State::Challenged { startup, user, role, scram: Box::new(scram) });
                Ok(())
            }
            (State::Challenged { startup, user, role, scram }, PgWireFrontendMessage::PasswordMessageFamily(msg)) => {
                let last = msg.into_sasl_response()?;
                let outcome =
                    scram.finish(&last.data).map_err(|e| self.refuse(&user, "protocol", "08P01", e.to_string()))?;
                let server_final = match (outcome, role) {
                    (ScramOutcome::Ok(v), Some(_)) => v,
                    (_, None) => {
                        return Err(self.refuse(
                            &user,
                            "unknown_user",
                            "28P01",
                            format!("password authentication failed for user \"{user}\""),
                        ))
                    }
                    (ScramOutcome::WrongPassword, Some(_)) => {
                        return Err(self.refuse(
                            &user,
                            "wrong_password",
                            "28P01",
                            format!("password authentication failed for user \"{user}\""),
                        ))
                    }
                };
                let role = role.unwrap_or(Role::Reader);
                if !role.allows(Role::Reader) {
                    return Err(self.refuse(
                        &user,
                        "role",
                        "28000",
                        format!("user \"{user}\" has role {} and may not run SQL (reader or admin may)", role.name()),
                    ));
                }
                client
                    .send(PgWireBackendMessage::Authentication(Authentication::SASLFinal(server_final.into())))
                    .await?;
                client.metadata_mut().insert(ROLE_KEY.into(), role.name().into());
                self.audit.record(AuditEvent {
                    user: Some(&user),
                    role: Some(role),
                    client: Some(self.peer.addr),
                    action: "login",
                    detail: None,
                    events: None,
                    outcome: "ok",
                    started: self.started,
                });
                // AuthenticationOk, parameters, key data, ReadyForQuery: as an open start-up.
                StartupHandler::on_startup(&*self.handler, client, PgWireFrontendMessage::Startup(startup)).await?;
                client.session_extensions().insert(LoggedIn);
                Ok(())
            }
            (state, other) => {
                self.put(state);
                Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                    "FATAL".into(),
                    "08P01".into(),
                    format!("unexpected message during authentication: {other:?}").chars().take(200).collect(),
                ))))
            }
        }
    }
}

/// The client metadata key holding the logged-in role.
pub const ROLE_KEY: &str = "treeai.role";

/// In a connection's session extensions once its login succeeded. pgwire goes on reading
/// after it refused a start-up (53300, a TLS-only server, a failed SCRAM exchange), so a
/// query pipelined behind a refused start-up reaches the query handlers: they refuse it
/// without this ([`logged_in`]).
#[derive(Clone, Copy, Debug)]
pub struct LoggedIn;

/// `Ok` once the connection's login succeeded, else FATAL 28000.
pub fn logged_in<C: pgwire::api::ClientInfo>(client: &C) -> PgWireResult<()> {
    if client.session_extensions().get::<LoggedIn>().is_some() {
        return Ok(());
    }
    Err(PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        "28000".into(),
        "the connection is not logged in".into(),
    ))))
}
