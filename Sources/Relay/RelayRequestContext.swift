import DeviceAuth
import Hummingbird
import HummingbirdWebSocket

/// Who a request was authenticated as, filled in by middleware before any upgrade.
public enum ClientIdentity: Sendable {
    case app(AppIdentity)
    case device(DeviceRecord)
}

/// The request context of every relay route: Hummingbird's core storage, the WebSocket handler
/// slot, and the identity authentication found.
public struct RelayRequestContext: RequestContext, WebSocketRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let webSocket: WebSocketHandlerReference<RelayRequestContext>
    public var identity: ClientIdentity?

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.webSocket = .init()
        self.identity = nil
    }
}
