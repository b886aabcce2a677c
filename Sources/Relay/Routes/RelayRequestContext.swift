/// The request context of the relay's HTTP routes: the client's address and connection.
import Hummingbird
import NIOCore

/// The request context of the relay's HTTP routes.
public struct RelayRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The client's IP address (per-IP limits).
    public let remoteIP: String?
    /// The connection the request came on (to notice its client leaving, `ClientDeparture`).
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.remoteIP = source.channel.remoteAddress?.ipAddress
        self.channel = source.channel
    }
}
