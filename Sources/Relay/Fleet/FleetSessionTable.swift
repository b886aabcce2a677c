/// The session table of a node of a fleet: the rules hold fleet-wide in the shared store, and messages for another node's links go through it.
import DeviceAuth
import Foundation
import HTTPTypes
import OpenSSLCrypto
import Registry
import RelayCore

/// The `SessionTable` of a node of a fleet on PostgreSQL: which link is a device's live one,
/// the session limits and presence are the shared store's, whichever node a client lands on;
/// messages for a link another node serves go through the store's inbox (`outbox`), and links
/// arriving from other nodes wait for the inbox reader (`arrivals`).
final class FleetSessionTable: SessionTable {
    let here: NodeSessions
    let store: any FleetStore
    let outbox: FleetOutbox
    let arrivals = Arrivals()

    init(store: any FleetStore, outbox: FleetOutbox) {
        self.here = NodeSessions(node: NodeID(rawValue: store.node))
        self.store = store
        self.outbox = outbox
    }

    /// A party another node serves, as this node reaches it.
    func remote(_ linkID: String, principal: String) -> RemoteLink {
        RemoteLink(id: linkID, principal: principal, outbox: outbox)
    }

    /// The fleet's rule, in one transaction of the shared store.
    func reserveSession(app: Link, deviceID: String, limits: SessionLimits, setupTimeout: Duration, requestedAt: ContinuousClock.Instant)
        async throws(StoreError) -> Result<Session, SessionRefusal>
    {
        let id = Session.makeID()
        let device: any LinkEndpoint
        var deviceNode = here.node
        switch try await store.reserveSession(
            id,
            app: app.storedRecord,
            deviceID: deviceID,
            createdAt: Date().timeIntervalSince1970,
            maxPerDevice: limits.maxPerDevice,
            maxPerApp: limits.maxPerApp
        ) {
        case .deviceOffline: return .failure(.deviceOffline)
        case .deviceBusy: return .failure(.deviceBusy(limit: limits.maxPerDevice))
        case .appLimit: return .failure(.appLimit(limit: limits.maxPerApp))
        case .reserved(let link) where link.node != store.node:
            device = remote(link.linkID, principal: deviceID)
            deviceNode = NodeID(rawValue: link.node)
        case .reserved(let link):
            guard let local = here.link(id: link.linkID) else {
                try? await store.forgetSession(id)
                return .failure(.deviceOffline)
            }
            device = local
        }
        here.store.update(id) { record in
            record = SessionRecord(
                id: id,
                app: app.address,
                device: LinkAddress(node: deviceNode, linkID: device.id),
                userID: app.principal,
                deviceID: deviceID,
                phase: .reserved
            )
        }
        let session = Session(
            id: id,
            app: app,
            device: device,
            keepsTimers: here.serves(device),
            setupTimeout: setupTimeout,
            requestedAt: requestedAt
        )
        let placed = here.place(session)
        if case .failure = placed { try? await store.forgetSession(id) }
        return placed
    }

    func prepare(_ identity: ClientIdentity, resume: ResumeRequest?, on switchboard: Switchboard) async throws(RelayHTTPError) -> LinkSeed? {
        try await switchboard.prepare(identity, resume: resume, in: self)
    }

    func bringHere(linkID: String, resumeToken: String, on switchboard: Switchboard) async {
        guard here.link(id: linkID) == nil,
            let row = try? await store.link(tokenHash: LibCrypto.sha256(Array(resumeToken.utf8))), row.linkID == linkID
        else { return }
        await switchboard.bringHere(row, in: self)
    }

    /// Contract §7 in a fleet: the messages are queued for the node that serves the link, which
    /// handles them as from the link (its rate limit and errors apply there). Throws 401 for a
    /// token that is not the link's.
    func forward(_ messages: [JSONValue], toLink linkID: String, resumeToken: String) async throws(RelayHTTPError) -> Int? {
        let row: FleetLinkRow?
        do throws(StoreError) {
            row = try await store.link(tokenHash: LibCrypto.sha256(Array(resumeToken.utf8)))
        } catch {
            throw RelayHTTPError.storeUnavailable
        }
        guard let row, row.owner != store.node, row.ownerRuns else { return nil }
        guard row.linkID == linkID else { throw RelayHTTPError(.unauthorized, "resume_token does not match this link") }
        let event = SessionEvent.fromLink.encoded
        do throws(StoreError) {
            try await store.send(messages.map { RemoteDelivery(linkID: linkID, type: "from_link", openBody: $0.serialized, event: event) })
        } catch {
            throw RelayHTTPError.storeUnavailable
        }
        return messages.count
    }

    /// Offline when the store does not answer.
    func presence(of deviceIDs: [String]) async -> [String: DevicePresence] {
        let found = (try? await store.presence(of: deviceIDs)) ?? [:]
        return Dictionary(
            uniqueKeysWithValues: deviceIDs.map { deviceID in
                let presence = found[deviceID]
                return (
                    deviceID,
                    DevicePresence(
                        status: .init(online: presence?.online ?? false, sessions: presence?.sessions ?? 0),
                        capabilities: presence?.capabilities.map(JSONValue.raw)
                    )
                )
            }
        )
    }

    /// The store tells every node, this one included, once a change is written (`FleetService`).
    func presenceNow(of deviceID: String) -> PresenceBoard.Status? { nil }

    func describe(deviceID: String, linkID: String, capabilities: JSONValue) async throws(StoreError) {
        try await store.describe(deviceID: deviceID, linkID: linkID, capabilities: capabilities.serialized)
    }

    func liveSessions(id: String?) async throws(StoreError) -> [FleetSession] {
        try await store.sessions(id: id)
    }

    /// The node serving the session's device holds it: the request goes to that link's node.
    func endElsewhere(sessionID: String, reason: SessionCloseReason) async throws(StoreError) -> Bool {
        guard let held = try await store.sessions(id: sessionID).first else { return false }
        try await store.request(
            RemoteDelivery(
                linkID: held.deviceLink,
                type: "end",
                openBody: "",
                event: SessionEvent.ending(sessionID: sessionID, reason: reason.rawValue).encoded
            )
        )
        return true
    }

    /// A link this node served already is reached through the store too, as its copy of the
    /// session reaches the restored one: what each party sent before the move and after it
    /// takes one path, and keeps its order.
    func partyElsewhere(_ linkID: String, principal: String, in stored: StoredLiveState) -> (any LinkEndpoint)? {
        guard stored.elsewhere[linkID] != nil || here.link(id: linkID) != nil else { return nil }
        return remote(linkID, principal: principal)
    }

    var isFenced: Bool { store.isFenced }
}
