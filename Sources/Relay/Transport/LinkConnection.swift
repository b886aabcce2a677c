/// What every transport of a link shares: the settings its `hello` announces.
import Foundation
import RelayCore

/// What every transport of a link shares: the switchboard, and the settings its `hello`
/// announces. WebSockets run as `LinkSocket`s, the HTTP fallbacks in `HTTPLinkRoutes`; both are
/// admitted by `ClientAdmission`, and the link's rules (token expiry included) are the same
/// `LinkStateMachine` whatever the transport.
struct LinkConnection: Sendable {
    let switchboard: Switchboard
    let heartbeatMilliseconds: Int
    let resumeGraceMilliseconds: Int

    /// The first message on every new connection (contract §4), without `seq`.
    func hello(_ link: Link, resumed: Bool) -> OutboundMessage {
        ServerMessage.hello(
            linkID: link.id,
            resumeToken: link.resumeToken,
            heartbeatMilliseconds: heartbeatMilliseconds,
            resumeGraceMilliseconds: resumeGraceMilliseconds,
            resumed: resumed,
            ackedCSeq: resumed ? link.announceAck() : nil
        ).outbound
    }
}
