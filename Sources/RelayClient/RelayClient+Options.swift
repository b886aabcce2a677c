/// Who a `RelayClient` connects as, and how it paces, backs off and refreshes.
import Logging
import NIOSSL

extension RelayClient {
    /// Who connects: an app with a JWT (asked for at each connect and before `exp`), or a
    /// device with its secret (each connect signed with a fresh nonce).
    public enum Identity: Sendable {
        case app(TokenProvider)
        case device(id: String, secret: String)
    }

    public struct Options: Sendable {
        /// The first delay before connecting again, doubled after each failure up to the maximum.
        public var initialBackoff: Duration = .milliseconds(250)
        public var maximumBackoff: Duration = .seconds(30)
        /// An app's token is refreshed this long before its `exp`.
        public var tokenRefreshMargin: Duration = .seconds(60)
        /// The client acks after this many messages.
        public var ackEvery = 16
        /// What the client sends is paced to stay under the relay's per-link limit (contract §5:
        /// 50 in a burst, 10/s by default), with a margin: over it the relay drops messages.
        public var messageBurst = 40
        public var messagesPerSecond = 9.0
        public var connectTimeout: Duration = .seconds(10)
        public var maxMessageSize = 1 << 20
        /// For `wss://`: the TLS settings (default: the system's trust roots).
        public var tls: TLSConfiguration?
        public var logger = Logger(label: "relay-client")

        public init() {}
    }
}
