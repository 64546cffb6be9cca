use serde_json::{json, Value};

use crate::protocol::EventContext;

/// Join and leave notices broadcast to a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Joined,
    Left,
}

impl Notice {
    pub fn event(self) -> &'static str {
        match self {
            Notice::Joined => "connected",
            Notice::Left => "disconnected",
        }
    }

    /// `id` lets a client drop the rare duplicate (the outbox sends at least once); `online` is
    /// the room's count of present users after this event.
    pub fn payload(
        self,
        id: &str,
        room: &str,
        ctx: &EventContext,
        at: &str,
        online: usize,
    ) -> Value {
        let kind = match self {
            Notice::Joined => "joined",
            Notice::Left => "left",
        };
        json!({ "type": kind, "id": id, "room": room, "userId": ctx.user_id, "connectionId": ctx.connection_id, "at": at, "online": online })
    }
}
