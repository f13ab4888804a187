// SPDX-License-Identifier: GPL-2.0-or-later
//
// Isolator (QML: org.kvmisolate.client): kvmisolated on the system bus for the Plasma applet.
//  - `available` follows the bus name org.kvmisolate.Isolator1 (QDBusServiceWatcher: the
//    absent state, and the recovery when the name gets an owner again; watching starts
//    nothing); `activatable` says whether the bus could start it.
//  - `status` is the Status() dictionary and `presets` the Presets property (a(ssssbs)),
//    converted to plain QVariantMap/QVariantList/strings/numbers (object paths as strings),
//    re-read on the service's signals: PropertiesChanged of any of its objects,
//    InterfacesAdded/Removed, Released. No polling.
//  - `released(name, path, reason)` relays the service's Released signal.
//  - release(name), releaseAll(), startPreset(name) call the service asynchronously with
//    ALLOW_INTERACTIVE_AUTHORIZATION set, so that the session's polkit agent may ask; each
//    call's outcome comes back as finished(tag, ok, errorName, errorMessage).
#pragma once

#include <QDBusConnection>
#include <QDBusMessage>
#include <QObject>
#include <QString>
#include <QTimer>
#include <QVariant>
#include <QtQml/qqmlregistration.h>

class QDBusServiceWatcher;
class QDBusPendingCallWatcher;

class Isolator : public QObject
{
    Q_OBJECT
    QML_ELEMENT

    Q_PROPERTY(bool available READ available NOTIFY availableChanged)
    Q_PROPERTY(bool activatable READ activatable NOTIFY activatableChanged)
    Q_PROPERTY(QVariantMap status READ status NOTIFY statusChanged)
    Q_PROPERTY(QVariantList presets READ presets NOTIFY statusChanged)
    Q_PROPERTY(bool statusKnown READ statusKnown NOTIFY statusChanged)
    Q_PROPERTY(QString lastError READ lastError NOTIFY statusChanged)
    Q_PROPERTY(int refreshes READ refreshes NOTIFY statusChanged)
    Q_PROPERTY(bool live READ live CONSTANT)

public:
    explicit Isolator(QObject *parent = nullptr);

    bool available() const { return m_available; }
    bool activatable() const { return m_activatable; }
    QVariantMap status() const { return m_status; }
    QVariantList presets() const { return m_presets; }
    bool statusKnown() const { return m_statusKnown; }
    QString lastError() const { return m_lastError; }
    int refreshes() const { return m_refreshes; }
    // Signals are always followed (kept for the view, which says so when they are not).
    bool live() const { return m_live; }

    // Re-reads the state now (also done on every signal of the service).
    Q_INVOKABLE void refresh();
    Q_INVOKABLE void release(const QString &name, const QString &tag);
    Q_INVOKABLE void releaseAll(const QString &tag);
    Q_INVOKABLE void startPreset(const QString &name, const QString &tag);

    // A D-Bus value as plain Qt values QML understands: QDBusArgument (arrays, structs,
    // dictionaries), QDBusVariant, object paths and signatures unwrapped, recursively.
    static QVariant plain(const QVariant &value);

Q_SIGNALS:
    void availableChanged();
    void activatableChanged();
    void statusChanged();
    void released(const QString &name, const QString &path, const QString &reason);
    void finished(const QString &tag, bool ok, const QString &errorName, const QString &errorMessage);

private Q_SLOTS:
    void onOwnerChanged(const QString &service, const QString &oldOwner, const QString &newOwner);
    void onChanged(const QDBusMessage &message);
    void onReleased(const QDBusMessage &message);

private:
    void subscribe();
    void act(const QString &member, const QVariantList &args, const QString &tag);
    void send(const QDBusMessage &message, quint64 generation, void (Isolator::*handle)(const QDBusMessage &));
    void onNameHasOwner(const QDBusMessage &reply);
    void onActivatable(const QDBusMessage &reply);
    void onStatus(const QDBusMessage &reply);
    void onPresets(const QDBusMessage &reply);
    void apply();

    QDBusConnection m_bus;
    QDBusServiceWatcher *m_watcher = nullptr;
    QTimer m_debounce;
    bool m_available = false;
    bool m_activatable = false;
    bool m_live = false;
    QVariantMap m_status;
    QVariantList m_presets;
    bool m_statusKnown = false;
    QString m_lastError;
    int m_refreshes = 0;

    // One refresh = Status() + Get(Presets); the newest generation's replies win.
    quint64 m_generation = 0;
    int m_pending = 0;
    QVariantMap m_nextStatus;
    QVariantList m_nextPresets;
    bool m_nextKnown = false;
    QString m_nextError;
    bool m_nextAvailable = false;
    bool m_nextActivatable = false;
};
