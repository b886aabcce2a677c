/// The request context of the relay's HTTP routes: the client's connection.
import Hummingbird
import NIOCore

/// The request context of the relay's HTTP routes.
public struct RelayRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    /// The connection the request came on (to notice its client leaving, `ClientDeparture`).
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
    }
}
