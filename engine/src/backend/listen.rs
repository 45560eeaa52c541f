//! LISTEN/NOTIFY under transaction pooling.
//!
//! A client's transaction lands on any server connection of the pool, so its `LISTEN` cannot
//! run on one of them. Instead each pool (on each shard) gets, on the first LISTEN of one of
//! its clients, a [`NotifyHub`]: one dedicated server connection, opened like the pool's own
//! (`Pool::connect_outside`, same target and login) but **not counted in the pool's size** —
//! a shard whose clients listen uses one extra server connection per pool. The hub's
//! connection LISTENs on the union of the channels its subscribers listen on, and a hub task
//! reads it and fans every NotificationResponse out to the subscribers of its channel.
//!
//! A subscriber ([`Subscriber`], one per listening client session) has a bounded queue of
//! NotificationResponse frames and a waker; the session delivers them to its client when the
//! client is idle (`Listener`, the session's side).
//!
//! - [`NotifyHub::listen`] returns once the server has executed (and committed) the LISTEN,
//!   so a NOTIFY sent after the client's LISTEN completed is never missed; a channel the hub
//!   already listens on needs no round trip.
//! - [`NotifyHub::unlisten`] drops the subscription at once (with its undelivered
//!   notifications, as PostgreSQL does); the hub UNLISTENs when a channel's last subscriber
//!   leaves — also when a subscriber is dropped (its client disconnected).
//! - The hub's connection dying is logged, then it is reopened and every channel LISTENed
//!   again; notifications sent in between are lost.
//! - With no channel left, the hub keeps its connection for the pool's `idle_timeout`, then
//!   closes it and its task ends; the next LISTEN starts them again.
//!
//! Everything is shard-local (`Rc`/`RefCell`, a glommio task): no threads, no locks.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;

use super::pool::Pool;
use super::server::ServerConn;
use crate::error::{Blame, ProxyError, SqlState};
use crate::net::codec::{parse_error_fields, put_msg, put_query, read_cstr, Frame};
use crate::net::conn::Conn;
use crate::sql::{quote_ident, quote_literal, ListenCommand};

/// NotificationResponse frames a subscriber holds for its client at most; past this the
/// oldest is dropped (a client that never reads costs bounded memory).
pub const QUEUE_CAP: usize = 1000;
/// The hub connection's `application_name` (what `pg_stat_activity` shows).
pub const APPLICATION_NAME: &str = "heliosproxy-listen";
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// One subscriber's side of the hub: its queue and what it listens on.
struct Sub {
    id: u64,
    queue: RefCell<VecDeque<Bytes>>,
    waker: RefCell<Option<Waker>>,
    channels: RefCell<Vec<String>>,
    /// The queue overflowed since it was last drained (logged once per overflow).
    overflowed: Cell<bool>,
}

impl Sub {
    fn push(&self, frame: &Bytes) {
        let mut q = self.queue.borrow_mut();
        if q.len() >= QUEUE_CAP {
            q.pop_front();
            if !self.overflowed.replace(true) {
                log::warn!(
                    "notify subscriber {}: the client does not read its notifications; {QUEUE_CAP} are waiting, dropping the oldest",
                    self.id
                );
            }
        }
        q.push_back(frame.clone());
        drop(q);
        if let Some(w) = self.waker.borrow().as_ref() {
            w.wake_by_ref();
        }
    }

    /// Drops queued notifications of `channel` (of every channel with `None`).
    fn purge(&self, channel: Option<&str>) {
        let mut q = self.queue.borrow_mut();
        match channel {
            None => q.clear(),
            Some(ch) => q.retain(|f| notification_channel(f) != Some(ch.as_bytes())),
        }
    }
}

/// The channel of a NotificationResponse frame (tag, length, pid, channel, payload).
fn notification_channel(frame: &[u8]) -> Option<&[u8]> {
    let mut body = frame.get(9..)?;
    read_cstr(&mut body)
}

/// A client session's subscription to a hub. Dropping it unsubscribes it from every channel.
pub struct Subscriber {
    hub: Rc<NotifyHub>,
    sub: Rc<Sub>,
}

impl Subscriber {
    /// Whether notifications are waiting; registers `cx`'s waker to be woken by new ones.
    pub fn poll_pending(&self, cx: &mut Context<'_>) -> bool {
        let mut w = self.sub.waker.borrow_mut();
        if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *w = Some(cx.waker().clone());
        }
        !self.sub.queue.borrow().is_empty()
    }

    /// Notifications waiting for the client.
    pub fn pending(&self) -> usize {
        self.sub.queue.borrow().len()
    }

    /// Moves the waiting notifications into the client's send buffer; how many.
    pub fn deliver(&self, client: &mut Conn) -> usize {
        let mut q = self.sub.queue.borrow_mut();
        let n = q.len();
        for f in q.drain(..) {
            client.queue_frame(&f);
        }
        self.sub.overflowed.set(false);
        n
    }

    /// The channels this subscriber listens on.
    pub fn channels(&self) -> Vec<String> {
        self.sub.channels.borrow().clone()
    }

    pub fn hub(&self) -> &Rc<NotifyHub> {
        &self.hub
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.hub.remove(&self.sub);
    }
}

enum Cmd {
    /// `SET application_name` on a new connection.
    Setup,
    Listen(String),
    Unlisten(String),
}

impl Cmd {
    fn channel(&self) -> Option<&str> {
        match self {
            Cmd::Setup => None,
            Cmd::Listen(c) | Cmd::Unlisten(c) => Some(c),
        }
    }
}

/// A command sent on the hub's connection, until its ReadyForQuery.
struct Sent {
    seq: u64,
    cmd: Cmd,
    /// The server's error: SQLSTATE and message.
    error: Option<(String, String)>,
}

/// A `listen` call waiting for the server to have executed a LISTEN of its channel.
struct Waiting {
    sub: u64,
    /// Satisfied by a successful LISTEN of the channel with `seq >= after`.
    after: u64,
    result: RefCell<Option<Result<(), ProxyError>>>,
    waker: RefCell<Option<Waker>>,
}

impl Waiting {
    fn finish(&self, r: Result<(), ProxyError>) {
        *self.result.borrow_mut() = Some(r);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

#[derive(Default)]
struct State {
    next_sub: u64,
    subs: HashMap<u64, Rc<Sub>>,
    /// What the subscribers want: channel → its subscribers (never empty).
    channels: HashMap<String, Vec<u64>>,
    /// Channels the server connection has executed a LISTEN of (and no UNLISTEN since).
    on_server: HashSet<String>,
    /// Commands sent, oldest first; each ends with a ReadyForQuery.
    in_flight: VecDeque<Sent>,
    /// The number of the last command sent.
    last_seq: u64,
    waiting: HashMap<String, Vec<Rc<Waiting>>>,
    /// `channels` changed since the task last compared them with the server's.
    dirty: bool,
    /// The hub task is alive (it ends once no channel is wanted and its connection is gone).
    running: bool,
    /// The hub task's waker, while it waits.
    task: Option<Waker>,
    /// Notifications fanned out (for logs and tests).
    delivered: u64,
}

/// A pool's notify hub: one server connection LISTENing for every subscriber on the shard.
pub struct NotifyHub {
    pool: Weak<Pool>,
    state: RefCell<State>,
}

impl NotifyHub {
    /// A hub for `pool`'s clients; it opens its connection at the first LISTEN.
    pub fn new(pool: Weak<Pool>) -> Rc<NotifyHub> {
        Rc::new(NotifyHub {
            pool,
            state: RefCell::new(State::default()),
        })
    }

    /// A new subscriber (listening on nothing yet).
    pub fn subscribe(self: &Rc<Self>) -> Subscriber {
        let mut st = self.state.borrow_mut();
        st.next_sub += 1;
        let sub = Rc::new(Sub {
            id: st.next_sub,
            queue: RefCell::new(VecDeque::new()),
            waker: RefCell::new(None),
            channels: RefCell::new(Vec::new()),
            overflowed: Cell::new(false),
        });
        st.subs.insert(sub.id, sub.clone());
        Subscriber {
            hub: self.clone(),
            sub,
        }
    }

    /// Subscribes `sub` to `channel` (as the server names it: see `sql::listen_command`).
    /// Returns once the hub's server connection has executed a LISTEN of it, so every
    /// notification committed after this returns reaches `sub`. No round trip if the hub
    /// already listens on it. An error (the server refused the LISTEN, or the hub could not
    /// connect) leaves `sub` not subscribed.
    pub async fn listen(
        self: &Rc<Self>,
        sub: &Subscriber,
        channel: &str,
    ) -> Result<(), ProxyError> {
        let waiting = {
            let mut st = self.state.borrow_mut();
            {
                let mut chans = sub.sub.channels.borrow_mut();
                if chans.iter().any(|c| c == channel) {
                    // LISTEN of a channel already listened on does nothing (as in PostgreSQL).
                    return Ok(());
                }
                chans.push(channel.to_string());
            }
            st.channels
                .entry(channel.to_string())
                .or_default()
                .push(sub.sub.id);
            let last = st
                .in_flight
                .iter()
                .rev()
                .find(|s| s.cmd.channel() == Some(channel));
            let after = match last {
                None if st.on_server.contains(channel) => return Ok(()),
                // A LISTEN on its way: its completion will do.
                Some(Sent {
                    seq,
                    cmd: Cmd::Listen(_),
                    ..
                }) => *seq,
                // The task sends a new LISTEN (after an UNLISTEN on its way, if there is one):
                // numbered above every command sent so far.
                _ => st.last_seq,
            };
            let w = Rc::new(Waiting {
                sub: sub.sub.id,
                after,
                result: RefCell::new(None),
                waker: RefCell::new(None),
            });
            st.waiting
                .entry(channel.to_string())
                .or_default()
                .push(w.clone());
            self.changed(st);
            w
        };
        std::future::poll_fn(|cx| {
            if let Some(r) = waiting.result.borrow_mut().take() {
                return Poll::Ready(r);
            }
            *waiting.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }

    /// Unsubscribes `sub` from `channel` (`None`: from every channel, `UNLISTEN *`), at once:
    /// its undelivered notifications of those channels are dropped. The server connection
    /// UNLISTENs channels nobody listens on any more (in the background).
    pub fn unlisten(self: &Rc<Self>, sub: &Subscriber, channel: Option<&str>) {
        let mut st = self.state.borrow_mut();
        drop_channels(&mut st, &sub.sub, channel);
        self.changed(st);
    }

    /// A subscriber went away: it leaves every channel.
    fn remove(self: &Rc<Self>, sub: &Rc<Sub>) {
        let mut st = self.state.borrow_mut();
        st.subs.remove(&sub.id);
        drop_channels(&mut st, sub, None);
        for ws in st.waiting.values_mut() {
            ws.retain(|w| w.sub != sub.id);
        }
        st.waiting.retain(|_, ws| !ws.is_empty());
        self.changed(st);
    }

    /// Channels the server connection listens on now.
    pub fn listening(&self) -> usize {
        self.state.borrow().on_server.len()
    }

    /// Subscribers alive.
    pub fn subscribers(&self) -> usize {
        self.state.borrow().subs.len()
    }

    /// Notifications handed to subscribers so far (one per subscriber reached).
    pub fn delivered(&self) -> u64 {
        self.state.borrow().delivered
    }

    /// What the subscribers want changed: wake the task, or start it (once the state is no
    /// longer borrowed: glommio runs a spawned task at once).
    fn changed(self: &Rc<Self>, mut st: RefMut<'_, State>) {
        st.dirty = true;
        if st.running {
            if let Some(w) = st.task.take() {
                w.wake();
            }
        } else if !st.channels.is_empty() {
            st.running = true;
            drop(st);
            glommio::spawn_local(run(self.clone())).detach();
        }
    }

    /// Fans a NotificationResponse out to its channel's subscribers.
    fn dispatch(&self, frame: Bytes) {
        let mut st = self.state.borrow_mut();
        let Some(channel) = notification_channel(&frame).and_then(|c| std::str::from_utf8(c).ok())
        else {
            return;
        };
        let Some(ids) = st.channels.get(channel) else {
            return;
        };
        let mut n = 0;
        for id in ids {
            if let Some(s) = st.subs.get(id) {
                s.push(&frame);
                n += 1;
            }
        }
        st.delivered += n;
    }

    /// Queues the commands that bring the server's channels in line with the subscribers'.
    fn reconcile(&self, st: &mut State, conn: &mut Conn) {
        // The server's channels once what is in flight has run.
        let mut will: HashMap<&str, bool> =
            st.on_server.iter().map(|c| (c.as_str(), true)).collect();
        for s in &st.in_flight {
            match &s.cmd {
                Cmd::Listen(c) => will.insert(c, true),
                Cmd::Unlisten(c) => will.insert(c, false),
                Cmd::Setup => None,
            };
        }
        let mut send = Vec::new();
        for c in st.channels.keys() {
            if !will.get(c.as_str()).copied().unwrap_or(false) {
                send.push(Cmd::Listen(c.clone()));
            }
        }
        for (c, on) in will {
            if on && !st.channels.contains_key(c) {
                send.push(Cmd::Unlisten(c.to_string()));
            }
        }
        for cmd in send {
            let sql = match &cmd {
                Cmd::Listen(c) => format!("LISTEN {}", quote_ident(c)),
                Cmd::Unlisten(c) => format!("UNLISTEN {}", quote_ident(c)),
                Cmd::Setup => continue,
            };
            log::debug!("notify hub: {sql}");
            put_query(conn.queue(), &sql);
            st.last_seq += 1;
            st.in_flight.push_back(Sent {
                seq: st.last_seq,
                cmd,
                error: None,
            });
        }
    }

    /// A frame from the hub's connection.
    fn on_frame(&self, f: Frame) {
        match f.tag {
            b'A' => self.dispatch(f.bytes),
            b'E' => {
                let e = parse_error_fields(f.body());
                let (code, msg) = (
                    String::from_utf8_lossy(e.code).into_owned(),
                    String::from_utf8_lossy(e.message).into_owned(),
                );
                let mut st = self.state.borrow_mut();
                match st.in_flight.front_mut() {
                    Some(s) => s.error = Some((code, msg)),
                    None => log::warn!("notify hub: server error {code}: {msg}"),
                }
            }
            b'Z' => {
                let mut st = self.state.borrow_mut();
                if let Some(sent) = st.in_flight.pop_front() {
                    completed(&mut st, sent);
                }
            }
            _ => {}
        }
    }

    /// Fails every waiting `listen` (the hub could not connect): their subscriptions go.
    fn fail_waiting(&self, e: &ProxyError) {
        let mut st = self.state.borrow_mut();
        let waiting = std::mem::take(&mut st.waiting);
        for (channel, ws) in waiting {
            for w in ws {
                if let Some(sub) = st.subs.get(&w.sub).cloned() {
                    drop_channels(&mut st, &sub, Some(&channel));
                }
                w.finish(Err(e.clone()));
            }
        }
    }

    fn label(&self) -> String {
        match self.pool.upgrade() {
            Some(p) => {
                let s = p.settings.borrow();
                format!("{}/{}", s.alias, s.target.user)
            }
            None => "?".into(),
        }
    }

    /// Serves the connection until it fails or the hub has been idle for `linger`.
    async fn serve(&self, s: &mut ServerConn, linger: Duration) -> Served {
        let mut timer: Option<glommio::timer::Timer> = None;
        std::future::poll_fn(|cx| self.poll_serve(cx, s, linger, &mut timer)).await
    }

    fn poll_serve(
        &self,
        cx: &mut Context<'_>,
        s: &mut ServerConn,
        linger: Duration,
        timer: &mut Option<glommio::timer::Timer>,
    ) -> Poll<Served> {
        loop {
            {
                let mut st = self.state.borrow_mut();
                if std::mem::take(&mut st.dirty) {
                    self.reconcile(&mut st, &mut s.conn);
                }
            }
            if s.conn.pending() > 0 {
                if let Poll::Ready(Err(e)) = s.conn.poll_flush(cx) {
                    return Poll::Ready(Served::Lost(e.to_string()));
                }
            }
            match s.conn.poll_read_into(cx, &mut s.reader) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Served::Lost("the server closed the connection".into()))
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Served::Lost(e.to_string())),
                Poll::Ready(Ok(_)) => {
                    loop {
                        match s.reader.next_frame() {
                            Ok(Some(f)) => self.on_frame(f),
                            Ok(None) => break,
                            Err(e) => return Poll::Ready(Served::Lost(format!("{e:?}"))),
                        }
                    }
                    continue;
                }
                Poll::Pending => {}
            }
            let mut st = self.state.borrow_mut();
            if st.dirty {
                continue;
            }
            st.task = Some(cx.waker().clone());
            if st.channels.is_empty() && st.in_flight.is_empty() {
                let t = timer.get_or_insert_with(|| glommio::timer::Timer::new(linger));
                if Pin::new(t).poll(cx).is_ready() {
                    return Poll::Ready(Served::Idle);
                }
            } else {
                *timer = None;
            }
            return Poll::Pending;
        }
    }
}

/// How a hub connection's service ended.
enum Served {
    /// No channel wanted for the linger time.
    Idle,
    /// The connection failed.
    Lost(String),
}

/// `sub` leaves `channel` (every channel with `None`), and its queued notifications of it go.
fn drop_channels(st: &mut State, sub: &Sub, channel: Option<&str>) {
    let gone: Vec<String> = {
        let mut chans = sub.channels.borrow_mut();
        match channel {
            None => std::mem::take(&mut *chans),
            Some(c) => match chans.iter().position(|x| x == c) {
                Some(i) => vec![chans.swap_remove(i)],
                None => Vec::new(),
            },
        }
    };
    for c in &gone {
        if let Some(ids) = st.channels.get_mut(c) {
            ids.retain(|&i| i != sub.id);
            if ids.is_empty() {
                st.channels.remove(c);
            }
        }
    }
    sub.purge(channel);
}

/// A command's ReadyForQuery arrived.
fn completed(st: &mut State, sent: Sent) {
    match sent.cmd {
        Cmd::Setup => {
            if let Some((code, msg)) = sent.error {
                log::warn!("notify hub: setting application_name failed ({code}): {msg}");
            }
        }
        Cmd::Unlisten(c) => {
            st.on_server.remove(&c);
        }
        Cmd::Listen(c) => match sent.error {
            None => {
                st.on_server.insert(c.clone());
                if let Some(ws) = st.waiting.get_mut(&c) {
                    ws.retain(|w| {
                        if w.after <= sent.seq {
                            w.finish(Ok(()));
                            false
                        } else {
                            true
                        }
                    });
                    if ws.is_empty() {
                        st.waiting.remove(&c);
                    }
                }
            }
            Some((code, msg)) => {
                // Nobody listens on a channel the server refuses (it would be retried forever).
                let ids = st.channels.remove(&c).unwrap_or_default();
                log::warn!(
                    "notify hub: the server refused LISTEN {} ({code}: {msg}); {} subscriber(s) no longer listen on it",
                    quote_ident(&c),
                    ids.len()
                );
                for id in ids {
                    if let Some(s) = st.subs.get(&id) {
                        s.channels.borrow_mut().retain(|x| *x != c);
                    }
                }
                let e = ProxyError::error(
                    server_state(&code),
                    Blame::Server,
                    format!("LISTEN failed on the server: {msg} (SQLSTATE {code})"),
                );
                for w in st.waiting.remove(&c).unwrap_or_default() {
                    w.finish(Err(e.clone()));
                }
            }
        },
    }
}

/// The SQLSTATEs a LISTEN is refused with, as ours (`XX000` for any other).
fn server_state(code: &str) -> SqlState {
    match code {
        "25006" => SqlState("25006"),
        "25P02" => SqlState("25P02"),
        "42501" => SqlState("42501"),
        "53200" => SqlState("53200"),
        "54000" => SqlState("54000"),
        "57014" => SqlState::QUERY_CANCELED,
        "0A000" => SqlState::FEATURE_NOT_SUPPORTED,
        _ => SqlState::INTERNAL_ERROR,
    }
}

/// The hub task: connects, serves, reconnects while any channel is wanted.
async fn run(hub: Rc<NotifyHub>) {
    let mut backoff = RECONNECT_MIN;
    loop {
        let pool = {
            let mut st = hub.state.borrow_mut();
            match hub.pool.upgrade() {
                Some(p) if !st.channels.is_empty() => p,
                _ => {
                    st.running = false;
                    st.task = None;
                    return;
                }
            }
        };
        let opened = pool.connect_outside().await;
        let linger = pool.settings.borrow().idle_timeout;
        drop(pool);
        let mut server = match opened {
            Ok(s) => s,
            Err(e) => {
                log::warn!(
                    "notify hub {}: cannot connect (retrying in {backoff:?}): {}",
                    hub.label(),
                    e.message
                );
                hub.fail_waiting(&e);
                glommio::timer::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        backoff = RECONNECT_MIN;
        {
            let mut st = hub.state.borrow_mut();
            log::info!(
                "notify hub {}: server connection {:?} (pid {}) opened for {} channel(s)",
                hub.label(),
                server.id,
                server.key.pid,
                st.channels.len()
            );
            put_query(
                server.conn.queue(),
                &format!("SET application_name = {}", quote_literal(APPLICATION_NAME)),
            );
            st.last_seq += 1;
            let seq = st.last_seq;
            st.in_flight.push_back(Sent {
                seq,
                cmd: Cmd::Setup,
                error: None,
            });
            st.dirty = true;
        }
        let end = hub.serve(&mut server, linger).await;
        let wanted = {
            let mut st = hub.state.borrow_mut();
            st.on_server.clear();
            st.in_flight.clear();
            // Every wanted channel is LISTENed again on the next connection.
            st.dirty = true;
            st.channels.len()
        };
        match end {
            Served::Idle => {
                log::info!(
                    "notify hub {}: no channel listened on for {linger:?}; closing its server connection",
                    hub.label()
                );
                {
                    let mut st = hub.state.borrow_mut();
                    st.running = false;
                    st.task = None;
                }
                put_msg(server.conn.queue(), b'X', |_| {});
                server.conn.close().await;
                return;
            }
            Served::Lost(why) if wanted > 0 => log::warn!(
                "notify hub {}: server connection {:?} lost ({why}); reconnecting and listening on {wanted} channel(s) again — notifications sent until then may be lost",
                hub.label(),
                server.id
            ),
            Served::Lost(why) => log::info!(
                "notify hub {}: server connection {:?} closed ({why})",
                hub.label(),
                server.id
            ),
        }
    }
}

/// A transaction-mode session's LISTEN state: nothing until its first LISTEN, then its
/// subscription to the hub of the session's pool.
#[derive(Default)]
pub struct Listener {
    sub: Option<Subscriber>,
}

impl Listener {
    /// Runs a client's LISTEN/UNLISTEN on `pool`'s hub; the CommandComplete tag to answer with.
    pub async fn run(
        &mut self,
        pool: &Rc<Pool>,
        cmd: ListenCommand,
    ) -> Result<&'static str, ProxyError> {
        match cmd {
            ListenCommand::Listen(channel) => {
                let sub = self
                    .sub
                    .get_or_insert_with(|| pool.notify_hub().subscribe());
                let hub = sub.hub.clone();
                hub.listen(sub, &channel).await?;
                Ok("LISTEN")
            }
            ListenCommand::Unlisten(channel) => {
                self.unlisten(channel.as_deref());
                Ok("UNLISTEN")
            }
        }
    }

    /// `UNLISTEN channel`, or `UNLISTEN *` with `None` (also what `DISCARD ALL` does).
    pub fn unlisten(&self, channel: Option<&str>) {
        if let Some(s) = &self.sub {
            s.hub.unlisten(s, channel);
        }
    }

    /// Whether notifications wait for the client (registering `cx` to be woken by new ones).
    pub fn poll_pending(&self, cx: &mut Context<'_>) -> bool {
        self.sub.as_ref().is_some_and(|s| s.poll_pending(cx))
    }

    /// Queues the waiting notifications for the client.
    pub fn deliver(&self, client: &mut Conn) {
        if let Some(s) = &self.sub {
            s.deliver(client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn notification(channel: &str, payload: &str) -> Bytes {
        let mut b = BytesMut::new();
        put_msg(&mut b, b'A', |b| {
            b.put_i32(42);
            crate::net::codec::put_cstr(b, channel.as_bytes());
            crate::net::codec::put_cstr(b, payload.as_bytes());
        });
        b.freeze()
    }

    /// Subscribes without the server (the state a confirmed LISTEN leaves, with the task
    /// taken as running: starting it needs an executor).
    fn subscribed(hub: &Rc<NotifyHub>, sub: &Subscriber, channel: &str) {
        let mut st = hub.state.borrow_mut();
        st.running = true;
        st.channels
            .entry(channel.into())
            .or_default()
            .push(sub.sub.id);
        sub.sub.channels.borrow_mut().push(channel.into());
        st.on_server.insert(channel.into());
    }

    #[test]
    fn fans_out_to_the_channel_subscribers_only() {
        let hub = NotifyHub::new(Weak::new());
        let (a, b) = (hub.subscribe(), hub.subscribe());
        subscribed(&hub, &a, "x");
        subscribed(&hub, &b, "x");
        subscribed(&hub, &b, "y");
        hub.dispatch(notification("x", "1"));
        hub.dispatch(notification("y", "2"));
        hub.dispatch(notification("z", "3"));
        assert_eq!((a.pending(), b.pending()), (1, 2));
        assert_eq!(hub.delivered(), 3);
    }

    #[test]
    fn the_queue_is_bounded_dropping_the_oldest() {
        let hub = NotifyHub::new(Weak::new());
        let a = hub.subscribe();
        subscribed(&hub, &a, "x");
        for i in 0..QUEUE_CAP + 500 {
            hub.dispatch(notification("x", &i.to_string()));
        }
        assert_eq!(a.pending(), QUEUE_CAP);
        let first = a.sub.queue.borrow()[0].clone();
        assert!(first.ends_with(b"500\0"), "{first:?}");
    }

    #[test]
    fn unlisten_drops_undelivered_notifications_of_that_channel() {
        let hub = NotifyHub::new(Weak::new());
        let a = hub.subscribe();
        subscribed(&hub, &a, "x");
        subscribed(&hub, &a, "y");
        hub.dispatch(notification("x", "1"));
        hub.dispatch(notification("y", "2"));
        {
            let mut st = hub.state.borrow_mut();
            drop_channels(&mut st, &a.sub, Some("x"));
            assert!(!st.channels.contains_key("x"));
        }
        assert_eq!(a.pending(), 1);
        assert_eq!(a.channels(), vec!["y".to_string()]);
        hub.dispatch(notification("x", "3"));
        assert_eq!(a.pending(), 1);
    }

    #[test]
    fn a_dropped_subscriber_leaves_every_channel() {
        let hub = NotifyHub::new(Weak::new());
        let (a, b) = (hub.subscribe(), hub.subscribe());
        subscribed(&hub, &a, "x");
        subscribed(&hub, &b, "x");
        drop(a);
        assert_eq!(hub.state.borrow().channels["x"], vec![b.sub.id]);
        assert_eq!(hub.subscribers(), 1);
        drop(b);
        let st = hub.state.borrow();
        assert!(st.channels.is_empty() && st.subs.is_empty() && st.dirty);
    }

    #[test]
    fn a_listen_completes_only_the_waiters_it_serves() {
        let mut st = State::default();
        let w = |after| {
            Rc::new(Waiting {
                sub: 1,
                after,
                result: RefCell::new(None),
                waker: RefCell::new(None),
            })
        };
        let (early, late) = (w(1), w(3));
        st.waiting
            .insert("x".into(), vec![early.clone(), late.clone()]);
        completed(
            &mut st,
            Sent {
                seq: 1,
                cmd: Cmd::Listen("x".into()),
                error: None,
            },
        );
        assert!(matches!(*early.result.borrow(), Some(Ok(()))));
        assert!(late.result.borrow().is_none());
        assert!(st.on_server.contains("x"));
        completed(
            &mut st,
            Sent {
                seq: 2,
                cmd: Cmd::Unlisten("x".into()),
                error: None,
            },
        );
        assert!(!st.on_server.contains("x"));
        completed(
            &mut st,
            Sent {
                seq: 3,
                cmd: Cmd::Listen("x".into()),
                error: Some(("25006".into(), "read only".into())),
            },
        );
        assert!(matches!(&*late.result.borrow(), Some(Err(e)) if e.code.0 == "25006"));
        assert!(st.waiting.is_empty());
    }
}
