/// A cap on the TCP connections one client address may hold open, whatever they carry.
import NIOCore
import Synchronization

/// Counts open connections per remote IP address. A connection over the cap is not served: it
/// is answered 429 (`OverCapRefusal`) and closed, and `refused` is told; addresses in `exempt`
/// (trusted proxies, which carry many clients each) are not counted.
public final class ConnectionsPerAddress: Sendable {
    public let limit: Int
    private let exempt: @Sendable (String) -> Bool
    private let refused: @Sendable () -> Void
    private let open = Mutex<[String: Int]>([:])

    public init(
        limit: Int,
        exempt: @escaping @Sendable (String) -> Bool = { _ in false },
        refused: @escaping @Sendable () -> Void = {}
    ) {
        self.limit = limit
        self.exempt = exempt
        self.refused = refused
    }

    /// Counts `channel` against its address until it closes; false (and nothing counted) when
    /// the address already holds `limit` connections.
    func admit(_ channel: any Channel) -> Bool {
        guard let address = channel.remoteAddress?.ipAddress, !exempt(address) else { return true }
        let admitted = open.withLock { open in
            let count = open[address, default: 0]
            guard count < limit else { return false }
            open[address] = count + 1
            return true
        }
        guard admitted else {
            refused()
            return false
        }
        channel.closeFuture.whenComplete { [self] _ in
            self.open.withLock { open in
                let count = open[address, default: 1] - 1
                open[address] = count > 0 ? count : nil
            }
        }
        return true
    }

    /// How many connections `address` holds open now.
    public func count(_ address: String) -> Int { open.withLock { $0[address, default: 0] } }
}
