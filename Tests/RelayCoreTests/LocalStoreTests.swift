/// The store seam in this process: the replace rule, the capacity rule, and sessions kept and forgotten as values.
import RelayCore
import Testing

@Suite struct LocalStoreTests {
    static func link(_ id: String, _ party: Party, _ principal: String, attached: Bool = true) -> LinkRecord {
        LinkRecord(address: LinkAddress(node: .local, linkID: id), party: party, principal: principal, attached: attached)
    }

    static let limits = SessionLimits(maxPerDevice: 2, maxPerApp: 3)

    @Test func aDevicesNewLinkReplacesItsLiveOneAndAnAppMayHaveMany() {
        let store = LocalStore()
        #expect(store.register(Self.link("d1", .device, "robot-1")) == nil)
        #expect(store.register(Self.link("d2", .device, "robot-1")) == LinkAddress(node: .local, linkID: "d1"))
        #expect(store.links(of: .device, principal: "robot-1").map(\.address.linkID) == ["d2"])
        // The replaced link going away does not take the new one with it.
        store.unregister(LinkAddress(node: .local, linkID: "d1"))
        #expect(store.links(of: .device, principal: "robot-1").map(\.address.linkID) == ["d2"])
        #expect(store.register(Self.link("a1", .app, "alice")) == nil)
        #expect(store.register(Self.link("a2", .app, "alice")) == nil)
        #expect(Set(store.links(of: .app, principal: "alice").map(\.address.linkID)) == ["a1", "a2"])
        #expect(store.counts == (2, 1, 0))
    }

    @Test func aSessionIsRefusedInTheContractsOrder() {
        let store = LocalStore()
        let app = LinkAddress(node: .local, linkID: "a1")
        _ = store.register(Self.link("a1", .app, "alice"))
        func reserve(_ id: String) -> Result<SessionRecord, SessionRefusal> {
            store.reserve(sessionID: id, app: app, userID: "alice", deviceID: "robot-1", limits: Self.limits)
        }
        #expect(reserve("s0") == .failure(.deviceOffline))
        _ = store.register(Self.link("d1", .device, "robot-1", attached: false))
        #expect(reserve("s0") == .failure(.deviceOffline), "a detached device takes no new session")
        store.setAttached(true, at: LinkAddress(node: .local, linkID: "d1"))
        let first = reserve("s1")
        #expect(first == .success(SessionRecord(id: "s1", app: app, device: LinkAddress(node: .local, linkID: "d1"), userID: "alice", deviceID: "robot-1", phase: .reserved)))
        #expect(reserve("s2").map(\.id) == .success("s2"))
        #expect(reserve("s3") == .failure(.deviceBusy(limit: 2)))
        // Room on the device again once a session is forgotten; the app link's own cap next.
        store.update("s1") { $0 = nil }
        _ = store.register(Self.link("d2", .device, "robot-2"))
        #expect(store.reserve(sessionID: "s4", app: app, userID: "alice", deviceID: "robot-2", limits: Self.limits).map(\.id) == .success("s4"))
        #expect(store.reserve(sessionID: "s5", app: app, userID: "alice", deviceID: "robot-2", limits: Self.limits).map(\.id) == .success("s5"))
        #expect(store.reserve(sessionID: "s6", app: app, userID: "alice", deviceID: "robot-1", limits: Self.limits) == .failure(.appLimit(limit: 3)))
    }

    @Test func aTransitionChangesOrForgetsARecordAtomically() {
        let store = LocalStore()
        let app = LinkAddress(node: .local, linkID: "a1")
        _ = store.register(Self.link("a1", .app, "alice"))
        _ = store.register(Self.link("d1", .device, "robot-1"))
        _ = store.reserve(sessionID: "s1", app: app, userID: "alice", deviceID: "robot-1", limits: Self.limits)
        let opened = store.update("s1") { record -> Bool in
            guard record?.phase == .reserved else { return false }
            record?.phase = .open
            return true
        }
        #expect(opened && store.session(id: "s1")?.phase == .open)
        #expect(store.sessions(of: app).map(\.id) == ["s1"])
        #expect(store.update("missing") { $0 == nil })
        store.update("s1") { $0 = nil }
        #expect(store.session(id: "s1") == nil && store.sessions(of: app).isEmpty && store.counts.sessions == 0)
    }
}
