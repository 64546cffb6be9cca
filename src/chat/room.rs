/// Room names become group names and DynamoDB keys, so they are kept to a safe alphabet.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoomError {
    #[error("room must be 1-64 characters")]
    Length,
    #[error("room may contain only letters, digits, '-', '_' and '.'")]
    Alphabet,
}

pub fn validate_room(room: &str) -> Result<(), RoomError> {
    if room.is_empty() || room.len() > 64 {
        return Err(RoomError::Length);
    }
    if !room
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(RoomError::Alphabet);
    }
    Ok(())
}

/// The roles a member of `room` gets: join/leave it and send to it.
pub fn room_roles(room: &str) -> Vec<String> {
    vec![
        format!("webpubsub.joinLeaveGroup.{room}"),
        format!("webpubsub.sendToGroup.{room}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_rules() {
        for ok in ["lobby", "a", "Room-1_x.y", &"r".repeat(64)] {
            assert_eq!(validate_room(ok), Ok(()), "{ok}");
        }
        assert_eq!(validate_room(""), Err(RoomError::Length));
        assert_eq!(validate_room(&"r".repeat(65)), Err(RoomError::Length));
        for bad in ["a b", "a/b", "é", "a#b", "lobby\n"] {
            assert_eq!(validate_room(bad), Err(RoomError::Alphabet), "{bad}");
        }
    }
}
